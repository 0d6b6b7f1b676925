"""benchmarks/run_all.py: runs every bench script, collects their tables into the README between
the markers, and says which failed or were not rerun. Fake scripts; nothing is timed."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


@pytest.fixture
def run_all(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_all_under_test", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    monkeypatch.setattr(module, "HERE", bench)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "RESULTS", bench / "results")
    monkeypatch.setattr(module, "README", bench / "README.md")
    (bench / "README.md").write_text(f"# Benchmarks\n\nintro\n\n{module.BEGIN}\nold numbers\n{module.END}\n\nfooter\n")
    return module, bench


def _script(folder: Path, name: str, body: str) -> None:
    (folder / f"bench_{name}.py").write_text(textwrap.dedent(body))


def test_runs_scripts_and_rewrites_the_results_block(run_all):
    module, bench = run_all
    _script(bench, "alpha", """
        import os, pathlib
        out = pathlib.Path("benchmarks/results"); out.mkdir(exist_ok=True)
        quick = os.environ.get("ONNXOPT_BENCH_QUICK", "0")
        (out / "alpha.md").write_text(f"## Alpha vs peer\\n\\n| a | b |\\n|---|---|\\n| 1 | {quick} |\\n")
    """)
    _script(bench, "broken", "raise SystemExit(3)\n")
    assert module.main(["--quick"]) == 1
    readme = (bench / "README.md").read_text()
    assert "old numbers" not in readme and readme.startswith("# Benchmarks") and readme.rstrip().endswith("footer")
    assert "### Alpha vs peer" in readme and "| 1 | 1 |" in readme  # demoted heading, quick flag passed on
    assert "| bench_alpha.py | ok |" in readme and "| bench_broken.py | failed (exit 3) |" in readme
    assert (bench / "results" / "broken.log").exists()


def test_only_and_collect_keep_other_tables(run_all):
    module, bench = run_all
    results = bench / "results"
    results.mkdir()
    (results / "beta.md").write_text("## Beta\n\nkept\n")
    _script(bench, "beta", "raise SystemExit(0)\n")
    _script(bench, "gamma", "import pathlib; pathlib.Path('benchmarks/results/gamma.md').write_text('## Gamma\\n')\n")
    assert module.main(["--only", "gamma"]) == 0
    readme = (bench / "README.md").read_text()
    assert "### Gamma" in readme and "kept" in readme and "Not rerun this time" in readme
    assert module.main(["--only", "beta"]) == 1  # exits 0 but wrote nothing: not ok
    assert "wrote no results/beta.md" in (bench / "README.md").read_text()
    assert module.main(["--collect"]) == 0
    with pytest.raises(SystemExit, match="no benchmark named delta"):
        module.main(["--only", "delta"])
