"""The wheel carries the whole library: every package and data file, and its CLI runs the example.

The fast checks read pyproject.toml against the tree (a new subpackage or data folder that the
packages list or package-data misses would be left out of the wheel silently). The slow one
builds the wheel, installs it into a fresh venv and compiles the shipped example from another
folder, as a user who installed from the wheel would.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_dirs() -> dict[str, Path]:
    """Every importable package in the tree, by installed name, from the package-dir mapping."""
    found = {}
    for name, folder in CONFIG["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder).parts
            found[".".join((name, *rel))] = init.parent
    return found


def test_every_package_is_listed():
    assert set(_package_dirs()) == set(CONFIG["packages"])


def test_every_data_file_is_shipped():
    """Non-Python files inside a package (recipes, the example model and its data) match package-data."""
    packages = _package_dirs()
    by_folder = {folder: name for name, folder in packages.items()}
    missing = []
    for folder in packages.values():
        for path in folder.rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            home = next(parent for parent in path.parents if parent in by_folder)  # the innermost package
            if home != folder:
                continue  # checked with its own package
            rel = str(path.relative_to(folder))
            if not any(fnmatch.fnmatch(rel, pattern) for pattern in CONFIG["package-data"].get(by_folder[folder], [])):
                missing.append(f"{by_folder[folder]}: {rel}")
    assert not missing, missing


def test_example_model_path():
    from onnxopt.models import example_model_path

    path = example_model_path()
    assert path.is_file() and path.suffix == ".onnx"
    assert len(list((path.parent / "calib").glob("*.npz"))) >= 32


def _build_wheel(out: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)]
    # Offline first, with the build tools at hand; a registry's setuptools when they are too old.
    if subprocess.run([*command, "--no-build-isolation"], capture_output=True).returncode != 0:
        subprocess.run(command, check=True, capture_output=True)
    (wheel,) = out.glob("onnxopt-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_and_compiles_the_shipped_example(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the venv's own paths
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([python, "-c", purelib], text=True).strip())
    # Dependencies come from this interpreter's site folders (read as plain paths: their .pth
    # files, such as an editable onnxopt install, are not run); onnxopt itself from the wheel.
    ours = [p for p in sys.path if p.endswith("site-packages")] + [sysconfig.get_paths()["purelib"]]
    (site / "zz_shared.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, env=env)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    where = subprocess.check_output(
        [python, "-c", "import onnxopt, onnxopt.models as m; print(onnxopt.__file__); print(m.example_model_path())"],
        cwd=elsewhere, text=True, env=env,
    ).split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    output = tmp_path / "x.onnx"
    run = subprocess.run(
        [venv / "bin" / "onnxopt", "compile", where[1], "--target", "ort-fp32", "-o", str(output)],
        cwd=elsewhere, capture_output=True, text=True, env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "verification (end): ok" in run.stdout and output.stat().st_size > 100_000
