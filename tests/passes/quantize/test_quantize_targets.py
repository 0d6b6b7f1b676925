"""The ort-int8 and trt-int8 targets end to end: recipes, API and CLI."""

from __future__ import annotations

import numpy as np
import onnx
from click.testing import CliRunner

import onnxopt
from onnxopt.cli import main
from onnxopt.passes.quantize.trt_rules import check_trt_qdq
from onnxopt.recipes import available_targets, load_target
from tests.passes.quantize.qmodels import conv_net, images, mean_cosine


def test_int8_targets_are_available_with_their_backends():
    assert {"ort-int8", "trt-int8"} <= set(available_targets())
    assert load_target("trt-int8")["backend"] == "tensorrt"
    assert [p for p in load_target("ort-int8")["passes"] if p["name"] == "quantize-int8"][0]["target"] == "ort"


def test_api_ort_int8_with_a_batchnorm_model():
    from onnx import helper

    from tests.conftest import init

    model = conv_net(with_softmax=False)
    r = np.random.default_rng(5)
    bn = helper.make_node("BatchNormalization", ["c1", "bn_g", "bn_b", "bn_mu", "bn_var"], ["bn1"], name="bn1")
    graph = model.graph
    relu = next(n for n in graph.node if n.op_type == "Relu")
    relu.input[0] = "bn1"
    graph.node.insert(1, bn)
    graph.initializer.extend([init("bn_g", r.uniform(0.5, 2, 8).astype(np.float32)), init("bn_b", r.standard_normal(8).astype(np.float32)),
                              init("bn_mu", r.standard_normal(8).astype(np.float32)), init("bn_var", r.uniform(0.5, 2, 8).astype(np.float32))])
    onnx.checker.check_model(model)
    result = onnxopt.compile(model, target="ort-int8", calibration=images(16), overrides=["quantize-int8.latency_aware=false"], profile=False)
    ops = [n.op_type for n in result.model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 2  # folded before quantizing
    assert result.report.verification["exact"] is False and result.report.verification["min_cosine"] > 0.9
    assert result.report.artifacts["quantize"]["fidelity_on_calibration"]["mean_cosine"] > 0.995
    assert mean_cosine(model, result.model, images(16, seed=4)) > 0.995


def test_cli_trt_int8_emits_tensorrt_ready_onnx(tmp_path):
    model_path = tmp_path / "net.onnx"
    onnx.save(conv_net(), model_path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feeds in enumerate(images(12)):
        np.savez(calib / f"{i:03d}.npz", **feeds)
    out = tmp_path / "net.trt-int8.onnx"
    result = CliRunner().invoke(main, ["compile", str(model_path), "--target", "trt-int8", "--calib", str(calib), "--emit", "onnx", "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    q = onnx.load(out)
    assert check_trt_qdq(q) == [] and any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_cli_int8_without_calibration_is_a_clear_error(tmp_path):
    model_path = tmp_path / "net.onnx"
    onnx.save(conv_net(), model_path)
    result = CliRunner().invoke(main, ["compile", str(model_path), "--target", "ort-int8", "--no-profile"])
    assert result.exit_code == 2 and "--calib" in result.output
