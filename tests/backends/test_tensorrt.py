"""TensorRT targets: the compile flow without TensorRT (exit 2, or the ONNX alone with --emit onnx),
the backend's pure parts on any machine, and real engine builds on a GPU (marked gpu)."""

from __future__ import annotations

import json
import sys

import onnx
import pytest
from click.testing import CliRunner

import onnxopt
from onnxopt.backends import get_backend
from onnxopt.backends.tensorrt import (
    EngineOptions,
    TensorRTBackend,
    availability,
    default_engine_path,
    layer_summary,
    merge_layer_times,
    parse_layer_information,
    timing_cache_path,
    write_bytes_atomic,
)
from onnxopt.backends.trt_check import check_model
from onnxopt.cli import main
from onnxopt.errors import ConfigError, TargetNotAvailableError
from onnxopt.inputs import input_specs, random_feeds
from onnxopt.runtime import run_model
from tests.conftest import assert_same_outputs
from tests.trt_models import conv_net, qdq_conv

MISSING = availability()
needs_no_tensorrt = pytest.mark.skipif(MISSING is None, reason="TensorRT and a CUDA device are present; this checks the path without them")


@pytest.fixture
def dynamic_model(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(conv_net(batch="N"), str(path))
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- the compile flow without TensorRT ----------------------------------------------------------


@needs_no_tensorrt
def test_trt_target_without_tensorrt_exits_2_and_leaves_the_onnx(dynamic_model, tmp_path):
    report = tmp_path / "report.json"
    result = run("compile", dynamic_model, "--target", "trt-fp16", "--input-shape", "x=1x3x8x8:4x3x8x8:8x3x8x8", "--report", report, "-q")
    assert result.exit_code == 2
    message = result.output.strip()
    assert message.count("\n") == 0 and message.startswith("onnxopt: error: target trt-fp16 cannot build its engine here")
    assert MISSING.split(" (")[0] in message and "--emit onnx" in message
    onnx_out = tmp_path / "net.trt-fp16.onnx"
    assert onnx_out.exists() and str(onnx_out) in message  # documented: the TensorRT-ready ONNX is kept
    assert not (tmp_path / "net.trt-fp16.engine").exists()
    data = json.loads(report.read_text())
    assert data["trt_check"]["ok"] is True and data["engine"] is None


@needs_no_tensorrt
def test_api_raises_target_not_available(tmp_path):
    with pytest.raises(TargetNotAvailableError, match="--emit onnx"):
        onnxopt.compile(conv_net(batch=1), target="trt-fp32", save=False)


def test_emit_onnx_writes_a_checked_model_that_runs_in_ort(dynamic_model, tmp_path):
    report = tmp_path / "report.json"
    result = run(
        "compile", dynamic_model, "--target", "trt-fp16", "--emit", "onnx",
        "--input-shape", "x=1x3x8x8:4x3x8x8:8x3x8x8", "--report", report, "-q",
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "net.trt-fp16.onnx"
    written = onnx.load(str(out))
    assert check_model(written, {"x": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}, precision="fp16").ok
    assert_same_outputs(onnx.load(str(dynamic_model)), written, shapes={"x": (4, 3, 8, 8)})
    data = json.loads(report.read_text())
    assert data["target"] == "trt-fp16" and data["trt_check"]["findings"] == []
    assert data["trt_check"]["profiles"] == {"x": [[1, 3, 8, 8], [4, 3, 8, 8], [8, 3, 8, 8]]}
    assert data["engine"] is None and data["latency"] is None
    assert not list(tmp_path.glob("*.engine"))


def test_emit_onnx_reports_checker_errors_without_failing(dynamic_model, tmp_path):
    result = run("compile", dynamic_model, "--target", "trt-fp32", "--emit", "onnx", "--json", "-q")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # No --input-shape: the ONNX is written for TensorRT, but its dynamic batch needs a profile.
    assert [f["code"] for f in data["trt_check"]["findings"]] == ["dynamic-shape"]
    assert any("TensorRT check: error: dynamic-shape" in w for w in data["warnings"])


def test_engine_options_come_from_the_recipe_and_set(dynamic_model, tmp_path):
    ok = run("compile", dynamic_model, "--target", "trt-fp16", "--emit", "onnx", "--set", "engine.workspace_mb=512", "-q")
    assert ok.exit_code == 0, ok.output
    bad = run("compile", dynamic_model, "--target", "trt-fp16", "--emit", "onnx", "--set", "engine.bogus=1", "-q")
    assert bad.exit_code == 2 and "valid options" in bad.output
    folder = run("compile", dynamic_model, "--target", "trt-fp16", "--engine", tmp_path / "nowhere" / "m.engine", "-q")
    assert folder.exit_code == 2 and "does not exist" in folder.output


def test_engine_options_validation():
    options = EngineOptions.from_recipe({"precision": "int8", "engine": {"workspace_mb": 256, "tf32": True}})
    assert (options.precision, options.workspace_mb, options.tf32, options.fp16_fallback) == ("int8", 256, True, True)
    with pytest.raises(ConfigError, match="valid options"):
        EngineOptions.from_recipe({"engine": {"workspace": 1}})
    with pytest.raises(ConfigError, match="precision"):
        EngineOptions.from_recipe({"precision": "fp8"})
    with pytest.raises(ConfigError, match="positive"):
        EngineOptions.from_recipe({"engine": {"workspace_mb": 0}})
    with pytest.raises(ConfigError, match="0 to 5"):
        EngineOptions.from_recipe({"engine": {"builder_optimization_level": "max"}})
    with pytest.raises(ConfigError, match="true or false"):
        EngineOptions.from_recipe({"engine": {"tf32": "yes"}})


def test_backend_is_registered_and_imports_no_tensorrt():
    backend = get_backend("tensorrt", threads=2)
    assert isinstance(backend, TensorRTBackend) and backend.name == "tensorrt"
    if MISSING is not None:
        assert "tensorrt" not in sys.modules


# --- the backend's pure parts -------------------------------------------------------------------


def test_paths(tmp_path, monkeypatch):
    assert default_engine_path(tmp_path / "out" / "m.trt-fp16.onnx", "m", "trt-fp16") == tmp_path / "out" / "m.trt-fp16.engine"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert timing_cache_path("auto", "10.3.0") == tmp_path / "onnxopt" / "tensorrt" / "timing-10.3.0.cache"
    assert timing_cache_path("off", "10.3.0") is None
    assert timing_cache_path(str(tmp_path / "t.cache"), "10.3.0") == tmp_path / "t.cache"
    target = write_bytes_atomic(tmp_path / "e.engine", b"\x00engine")
    assert target.read_bytes() == b"\x00engine" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


DETAILED = {
    "Layers": [
        {
            "Name": "/conv1/Conv + /relu1/Relu",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "x", "Format/Datatype": "Channel major FP16 format where channel % 8 is padded"}],
            "Outputs": [{"Name": "r1", "Format/Datatype": "Row major linear FP32"}],
            "TacticName": "sm80_xmma_fprop",
            "Metadata": "[ONNX Layer: conv1]\x1f[ONNX Layer: relu1]",
        },
        {"Name": "fc", "LayerType": "Gemm", "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}]},
    ],
    "Bindings": ["x", "y"],
}


def test_layer_information_parsing_and_times():
    rows = parse_layer_information(json.dumps(DETAILED))
    assert [(r["name"], r["precision"], r["onnx_nodes"], r["fused"]) for r in rows] == [
        ("/conv1/Conv + /relu1/Relu", "fp16", ["conv1", "relu1"], 2),
        ("fc", "fp32", [], 1),
    ]
    names_only = parse_layer_information(json.dumps({"Layers": ["a + b", "c"]}))
    assert [r["fused"] for r in names_only] == [2, 1]
    merged = merge_layer_times(rows, {"/conv1/Conv + /relu1/Relu": 3.0, "fc": 1.0, "Reformat": 0.0}, runs=10)
    by_name = {r["name"]: r for r in merged}
    assert by_name["/conv1/Conv + /relu1/Relu"]["ms_per_run"] == pytest.approx(0.3)
    assert by_name["fc"]["share"] == pytest.approx(0.25) and "Reformat" in by_name
    summary = layer_summary(merged, onnx_nodes=7)
    assert summary["engine_layers"] == 3 and summary["fused_layers"] == 1 and summary["by_precision"]["fp16"] == 1


# --- real engines (GPU) -------------------------------------------------------------------------


def _lower(model, precision, tmp_path, profiles=None):
    options = EngineOptions(precision=precision, workspace_mb=512, timing_cache=str(tmp_path / "timing.cache"))
    shapes = {k: v[1] for k, v in (profiles or {}).items()}
    feeds = random_feeds(input_specs(model, shapes), seed=0)
    backend = TensorRTBackend(options=options, profiles=profiles or {})
    _, report = backend.build_and_profile(
        model, feeds, engine_path=tmp_path / f"m.{precision}.engine", reference=run_model(model, feeds), iters=20, layer_runs=3
    )
    return report


@pytest.mark.gpu
@pytest.mark.skipif(MISSING is not None, reason=f"needs TensorRT 10 and a CUDA device: {MISSING}")
def test_fp16_engine_matches_ort_and_is_profiled(tmp_path):
    profiles = {"x": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}
    report = _lower(conv_net(batch="N"), "fp16", tmp_path, profiles)
    assert (tmp_path / "m.fp16.engine").stat().st_size == report["bytes"] > 0
    assert report["fidelity"]["min_cosine"] > 0.999 and report["fidelity"]["max_rel_error"] < 2e-2
    lat = report["latency"]
    assert lat["iterations"] == 20 and 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["batch"] == 4
    assert any("ms_per_run" in row for row in report["layers"])
    assert report["layer_summary"]["engine_layers"] >= 1 and "FP16" in report["builder_flags"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    again = _lower(conv_net(batch="N"), "fp16", tmp_path, profiles)
    assert again["timing_cache"]["loaded_bytes"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(MISSING is not None, reason=f"needs TensorRT 10 and a CUDA device: {MISSING}")
def test_int8_engine_from_qdq_matches_ort(tmp_path):
    model = qdq_conv()
    assert check_model(model, precision="int8").ok
    report = _lower(model, "int8", tmp_path)
    assert report["fidelity"]["min_cosine"] > 0.99
    assert "int8" in report["layer_summary"]["by_precision"]


@pytest.mark.gpu
@pytest.mark.skipif(MISSING is not None, reason=f"needs TensorRT 10 and a CUDA device: {MISSING}")
def test_compile_trt_fp16_end_to_end(dynamic_model, tmp_path):
    result = run("compile", dynamic_model, "--target", "trt-fp16", "--input-shape", "x=1x3x8x8:2x3x8x8:4x3x8x8", "--iters", 10, "--json", "-q")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (tmp_path / "net.trt-fp16.engine").exists() and data["engine"]["path"].endswith("net.trt-fp16.engine")
    assert data["engine"]["fidelity"]["min_cosine"] > 0.999
