"""Compile as stages: each returns a typed result, the report is assembled from them, the gate reuses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt import stages
from onnxopt.errors import OnnxoptError
from onnxopt.gate import Thresholds, run_gate
from tests.trt_models import conv_net


def test_stages_return_typed_results_and_the_report_is_assembled_from_them():
    opts = stages.CompileOptions(target="ort-fp32", profile_iters=4)
    loaded = stages.load(conv_net(batch=1), opts)
    assert isinstance(loaded, stages.Loaded) and loaded.target.name == "ort-fp32" and loaded.passes
    optimized = stages.optimize(loaded, opts)
    assert isinstance(optimized, stages.Optimized) and optimized.records
    exported = stages.export(loaded, optimized)
    assert exported.verification["ok"] and exported.summary["nodes"] <= loaded.summary["nodes"]
    assert stages.evaluate_stage(loaded, exported, opts) is None and stages.write(exported, opts) is None
    lowered = stages.lower(loaded, exported, opts, None)
    assert lowered.unavailable is None and lowered.section["latency"]["pairs"] == 4
    report = stages.assemble_report(loaded, optimized, exported, None, lowered, None)
    assert report.latency == lowered.section["latency"] and report.passes == optimized.records
    assert report.before == loaded.summary and report.after == exported.summary


def test_gate_loads_the_model_once(tmp_path, monkeypatch):
    path = tmp_path / "net.onnx"
    onnx.save(conv_net(batch=1), str(path))
    reads = []
    real = stages.load_model
    monkeypatch.setattr(stages, "load_model", lambda model, **kw: reads.append(model) or real(model, **kw))
    result = run_gate(str(path), "ort-fp32", Thresholds(max_size_mb=1.0))
    assert result.passed and reads == [str(path)]
    assert result.report.gate["passed"] and result.report.output is None


def test_bad_evaluation_data_leaves_no_output(tmp_path):
    path, out = tmp_path / "net.onnx", tmp_path / "out.onnx"
    onnx.save(conv_net(batch=1), str(path))
    with pytest.raises(OnnxoptError):
        onnxopt.compile(str(path), output=out, profile=False, evaluation_data=[{"wrong": np.zeros((1, 3), np.float32)}])
    assert not out.exists()


def test_the_keyword_call_tune_makes_keeps_working():
    """onnxopt.tune compiles trials like this and reads report.latency and report.evaluation."""
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    result = onnxopt.compile(
        conv_net(batch=1), target="ort-fp32", calibration=data, extra_passes=[], overrides=[],
        options={"max_drop": 1.0}, evaluation_data=data, labels=None, save=False, profile_iters=4,
    )
    assert result.output_path is None and result.report.latency["pairs"] == 4
    assert result.report.evaluation["samples"] == 4 and result.report.evaluation["fidelity"] > 0.9999
    assert not list(Path(".").glob("*.ort-fp32.onnx"))


EXAMPLE = Path(__file__).resolve().parents[1] / "models" / "example"


def test_evaluating_on_the_calibration_samples_is_warned_about():
    """Refits fit their calibration samples, so fidelity on them reads too well (issue 17); the
    report says so whenever evaluation samples are also calibration samples."""
    model, calib = str(EXAMPLE / "fashion_cnn.onnx"), str(EXAMPLE / "calib")
    same = onnxopt.compile(model, target="ort-int8", calibration=calib, evaluation_data=calib, save=False, profile=False)
    assert same.report.evaluation["calibration_overlap"] == 64
    assert any("64 of the 64 evaluation samples are also calibration samples" in w for w in same.report.warnings)
    disjoint = onnxopt.compile(model, target="ort-int8", calibration=calib, evaluation_data=str(EXAMPLE / "eval.npz"), save=False, profile=False)
    assert disjoint.report.evaluation["calibration_overlap"] == 0
    assert not any("calibration samples" in w for w in disjoint.report.warnings)
