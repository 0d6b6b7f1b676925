"""The gate on real models and real data: a gate that is met exits 0, one that cannot be met exits
1, and the JSON and JUnit files name the failing threshold. Skipped where the models are absent."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxopt.cli import main

pytestmark = pytest.mark.real

EXAMPLE = Path(__file__).resolve().parents[1] / "models" / "example"
ZOO = Path(os.environ.get("ONNXOPT_ZOO") or Path.home() / ".cache" / "onnxopt" / "zoo")


def _gate(*args):
    return CliRunner().invoke(main, ["gate", *map(str, args), "-q"])


def _failed_in(json_path: Path, junit_path: Path) -> tuple[set, set]:
    data = json.loads(json_path.read_text())
    suite = ET.parse(junit_path).getroot().find("testsuite")
    junit_failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    return set(data["failed"]), junit_failed


def _zoo(name: str) -> Path:
    folder = ZOO / name
    if not (folder / "meta.json").exists():
        pytest.skip(f"zoo model {name} is not materialized under {ZOO} (python -m onnxopt.models.zoo --only {name})")
    return folder


@pytest.fixture
def fashion():
    model = EXAMPLE / "fashion_cnn.onnx"
    if not model.exists():
        pytest.skip(f"the Fashion-MNIST example model is not in {EXAMPLE}")
    return model, EXAMPLE / "eval.npz", EXAMPLE / "eval_labels.npy"


def test_fashion_cnn_gate_met(fashion, tmp_path):
    model, data, labels = fashion
    result = _gate(model, "--data", data, "--labels", labels, "--max-drop", 0.5, "--min-fidelity", 0.999,
                   "--min-speedup", 0.5, "--max-size-mb", 1, "--iters", 20, "--json", tmp_path / "g.json", "--junit", tmp_path / "g.xml")
    assert result.exit_code == 0, result.output
    data_json = json.loads((tmp_path / "g.json").read_text())
    drop = next(c for c in data_json["checks"] if c["name"] == "max_drop")
    assert "on 500 samples" in drop["detail"]
    assert data_json["evaluation"]["accuracy"]["original"]["top1"] > 0.85  # the model is trained, the labels are real
    assert _failed_in(tmp_path / "g.json", tmp_path / "g.xml") == (set(), set())


def test_fashion_cnn_gate_that_cannot_be_met(fashion, tmp_path):
    model, data, labels = fashion
    result = _gate(model, "--data", data, "--labels", labels, "--max-drop", 0.5, "--max-size-mb", 0.01,
                   "--min-speedup", 100, "--iters", 10, "--latency-rounds", 1, "--json", tmp_path / "g.json", "--junit", tmp_path / "g.xml")
    assert result.exit_code == 1, result.output
    assert _failed_in(tmp_path / "g.json", tmp_path / "g.xml") == ({"max_size_mb", "min_speedup"},) * 2


def test_ppocr_cls_labeled_gate(tmp_path):
    folder = _zoo("ppocr_cls")
    angles = json.loads((folder / "eval" / "labels.json").read_text())
    np.save(tmp_path / "labels.npy", np.array([0 if angles[k] == "0" else 1 for k in sorted(angles)], dtype=np.int64))
    common = [folder / "model.onnx", "--data", folder / "eval", "--labels", tmp_path / "labels.npy", "--json", tmp_path / "g.json", "--junit", tmp_path / "g.xml"]
    met = _gate(*common, "--max-drop", 0.5, "--min-fidelity", 0.9999, "--max-size-mb", 10)
    assert met.exit_code == 0, met.output
    assert json.loads((tmp_path / "g.json").read_text())["evaluation"]["accuracy"]["labels"] == 64
    unmet = _gate(*common, "--max-drop", 0.5, "--max-size-mb", 0.05)
    assert unmet.exit_code == 1, unmet.output
    assert _failed_in(tmp_path / "g.json", tmp_path / "g.xml") == ({"max_size_mb"},) * 2


def test_efficientnet_gate_on_photos(tmp_path):
    """On an already compiled model (--optimized), as a deployment pipeline would run it."""
    folder = _zoo("efficientnet_lite0")
    compiled = CliRunner().invoke(main, ["compile", str(folder / "model.onnx"), "-o", str(tmp_path / "opt.onnx"), "--no-profile", "-q"])
    assert compiled.exit_code == 0, compiled.output
    common = [folder / "model.onnx", "--optimized", tmp_path / "opt.onnx", "--data", folder / "eval", "--eval-limit", 12,
              "--json", tmp_path / "g.json", "--junit", tmp_path / "g.xml"]
    met = _gate(*common, "--min-fidelity", 0.9999, "--max-drop", 0.0, "--max-size-mb", 30, "--report", tmp_path / "r.html")
    assert met.exit_code == 0, met.output
    assert "Gate passed" in (tmp_path / "r.html").read_text()
    unmet = _gate(*common, "--min-fidelity", 0.9999, "--min-speedup", 50, "--iters", 8, "--latency-rounds", 1)
    assert unmet.exit_code == 1, unmet.output
    assert _failed_in(tmp_path / "g.json", tmp_path / "g.xml") == ({"min_speedup"},) * 2
