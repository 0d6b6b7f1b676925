"""The gate on a TensorRT target: accuracy, fidelity and size are judged on the TensorRT-ready ONNX
(run by ONNX Runtime) on any machine; latency needs the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxopt.backends.tensorrt import availability
from onnxopt.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "models" / "example"
MISSING = availability()
ARGS = [
    "gate", str(EXAMPLE / "fashion_cnn.onnx"), "--target", "trt-int8", "--calib", str(EXAMPLE / "calib"),
    "--data", str(EXAMPLE / "eval.npz"), "--labels", str(EXAMPLE / "eval_labels.npy"), "-q",
]


def test_trt_int8_gate_judges_accuracy_on_the_onnx(tmp_path):
    result = CliRunner().invoke(main, ARGS + ["--max-drop", "1", "--max-size-mb", "5", "--json", str(tmp_path / "g.json"),
                                              "--report", str(tmp_path / "g.md"), "--seed", "0"])
    assert result.exit_code in (0, 1), result.output
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["target"] == "trt-int8" and [c["name"] for c in data["checks"]] == ["max_drop", "max_size_mb"]
    drop = data["checks"][0]
    assert drop["measured"] is not None and "500 samples" in drop["detail"]
    assert result.exit_code == (0 if data["passed"] else 1)
    report = (tmp_path / "g.md").read_text()
    assert "TensorRT readiness:" in report and "gate passed" in report or "gate failed" in report


@pytest.mark.skipif(MISSING is None, reason="TensorRT and a CUDA device are present: the gate can time the engine here")
@pytest.mark.parametrize("flag", ["--min-speedup", "--max-latency-ms"])
def test_trt_latency_threshold_without_tensorrt_is_a_one_line_error(flag, tmp_path):
    result = CliRunner().invoke(main, ARGS + ["--max-drop", "1", flag, "1.1", "--json", str(tmp_path / "g.json")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert message.count("\n") == 0 and "TensorRT" in message and flag in message
    assert json.loads((tmp_path / "g.json").read_text())["exit_code"] == 2
