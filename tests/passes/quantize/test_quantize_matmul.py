"""MatMul-heavy models: dynamic int8 MatMul weights on ORT, and weight-only block-wise MatMulNBits."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import helper

import onnxopt
from onnxopt.passes.quantize.nbits import quantize_blocks
from onnxopt.runtime import run_model
from tests.conftest import init, make_model, tensor
from tests.passes.quantize.qmodels import compile_int8, conv_net, images, mean_cosine, ops, ort_optimized_ops


def mlp(k=64, hidden=128, seq=6, seed=0):
    r = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w2"], ["o"], name="fc2"),
        helper.make_node("Softmax", ["o"], ["y"], axis=-1, name="softmax"),
    ]
    inits = [init("w1", (r.standard_normal((k, hidden)) / np.sqrt(k)).astype(np.float32)), init("b1", np.full(hidden, 0.1, np.float32)),
             init("w2", (r.standard_normal((hidden, k)) / np.sqrt(hidden)).astype(np.float32))]
    return make_model(nodes, [tensor("x", [1, seq, k])], [tensor("y", [1, seq, k])], inits)


def sentences(n=12, k=64, seq=6, seed=3):
    r = np.random.default_rng(seed)
    return [{"x": (r.standard_normal((1, seq, k)) * np.linspace(0.2, 2, k)).astype(np.float32)} for _ in range(n)]


def test_dynamic_matmul_quantization(tmp_path):
    model, data = mlp(), sentences()
    result = compile_int8(model, data, matmul="dynamic", final_layer="int8")
    q = result.model
    assert ops(q).count("DynamicQuantizeLinear") == 2 and ops(q).count("MatMulInteger") == 2
    assert "MatMul" not in ops(q) and "QuantizeLinear" not in ops(q)
    assert ort_optimized_ops(q, tmp_path)["DynamicQuantizeMatMul"] == 2
    assert mean_cosine(model, q, sentences(seed=11)) > 0.999
    assert result.report.artifacts["quantize"]["matmul_mode"] == "dynamic"


def test_auto_matmul_mode_picks_the_better_variant_and_says_so():
    model, data = mlp(), sentences()
    report = compile_int8(model, data, matmul="auto", final_layer="int8").report.artifacts["quantize"]
    mode = report["matmul_mode"]
    assert mode.startswith(("static (drop", "dynamic (drop"))
    drops = [float(part.split()[-1].rstrip(")")) for part in mode.split(" vs ")]
    chosen, other = drops
    assert chosen <= other


def test_a_cnn_classifier_goes_static_without_measuring_both_modes(monkeypatch):
    """The classifier of a conv net reads pooled int8 features: static, and no full-model runs spent on the choice."""
    from onnxopt.passes.quantize import int8

    model, data = conv_net(), images(16)
    runs = []
    real = int8.run_all
    monkeypatch.setattr(int8, "run_all", lambda *a, **k: runs.append(1) or real(*a, **k))
    result = compile_int8(model, data, matmul="auto", final_layer="int8", max_drop=-1.0, latency_aware=False, sequential_correction=False)
    report = result.report.artifacts["quantize"]
    assert report["matmul_mode"].startswith("static (the only candidate is the final classifier")
    assert len(runs) == 1  # the fidelity of the built model, no static-vs-dynamic pair
    q = result.model
    assert "DynamicQuantizeLinear" not in ops(q)
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    assert any(n.op_type == "DequantizeLinear" and n.output[0] == gemm.input[1] for n in q.graph.node)  # int8 weight
    assert mean_cosine(model, q, images(8, seed=5)) > 0.99


@pytest.mark.parametrize("bits, tolerance", [(4, 0.12), (8, 0.01)])
def test_matmul_nbits_weight_only(bits, tolerance):
    model, data = mlp(), sentences(4)
    recipe = {"name": "nbits", "passes": [{"name": "matmul-nbits", "bits": bits, "block_size": 32, "min_elements": 1}], "verify": {}}
    result = onnxopt.compile(model, recipe=recipe, profile=False, verify="off")
    q = result.model
    assert ops(q).count("MatMulNBits") == 2
    node = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
    assert node.domain == "com.microsoft"
    packed = next(onnx.numpy_helper.to_array(t) for t in q.graph.initializer if t.name == node.input[1])
    assert packed.dtype == np.uint8 and packed.shape == (128, 2, 32 * bits // 8)
    # numbers: the kernel computes x @ dequantized(W), and dequantized W is close to W
    w1 = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w1")
    _, _, dequant = quantize_blocks(w1, bits, 32)
    probe = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [1, 6, 64])], [tensor("y", [1, 6, 128])], [init("w", dequant)])
    one = onnxopt.compile(
        make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [1, 6, 64])], [tensor("y", [1, 6, 128])], [init("w", w1)]),
        recipe=recipe, profile=False, verify="off",
    ).model
    x = data[0]["x"]
    np.testing.assert_allclose(run_model(one, {"x": x})["y"], run_model(probe, {"x": x})["y"], rtol=1e-3, atol=1e-3)
    rel = np.linalg.norm(dequant - w1) / np.linalg.norm(w1)
    assert rel < tolerance
    assert result.report.artifacts["matmul_nbits"]["matmuls"] == 2
    assert mean_cosine(model, q, data) > (0.99 if bits == 4 else 0.9999)


def test_matmul_nbits_rejects_a_bad_block_size():
    from onnxopt.errors import ConfigError

    recipe = {"name": "nbits", "passes": [{"name": "matmul-nbits", "block_size": 24}], "verify": {}}
    with pytest.raises(ConfigError, match="power of two"):
        onnxopt.compile(mlp(), recipe=recipe, profile=False, verify="off")
