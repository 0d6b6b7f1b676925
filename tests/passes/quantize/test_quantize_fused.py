"""The int8 targets fuse before they quantize, and the quantizer handles what fusion makes:
LayerNormalization / SkipLayerNormalization / Gelu stay float between int8 MatMuls, a Gemm made
from MatMul + Add can still be quantized dynamically on ORT, and the TensorRT graph keeps standard
ops only."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from onnx import helper

import onnxopt
from onnxopt.api import resolve_recipe
from onnxopt.backends.trt_check import check_model
from onnxopt.models.builders import transformer_block
from onnxopt.passes.quantize.trt_rules import check_trt_qdq
from tests.conftest import init, make_model, tensor
from tests.passes.quantize.qmodels import compile_int8, mean_cosine, ort_optimized_ops

WEIGHTED = {"attn.query.matmul", "attn.key.matmul", "attn.value.matmul", "attn.output.matmul", "ffn.up.matmul", "ffn.down.matmul"}


def tokens(n, seed):
    r = np.random.default_rng(seed)
    return [{"x": r.standard_normal((1, 8, 32)).astype(np.float32)} for _ in range(n)]


def histogram(model):
    return collections.Counter((f"{n.domain}." if n.domain else "") + n.op_type for n in model.graph.node)


def compile_target(model, target, data, *overrides):
    return onnxopt.compile(model, target=target, calibration=data, profile=False, emit="onnx",
                           overrides=["quantize-int8.latency_aware=false", *overrides])


@pytest.mark.parametrize("target", ["ort-int8", "trt-int8"])
def test_int8_recipes_fuse_before_quantizing_and_prune_before_fusing(target):
    names = [p["name"] for p in resolve_recipe(target, None, [], [{"name": "channel-prune", "ratio": 0.3}])["passes"]]
    assert names.index("constant-folding") < names.index("channel-prune") < names.index("fusion") < names.index("quantize-int8")


@pytest.mark.parametrize("matmul", ["static", "dynamic"])
def test_ort_int8_quantizes_the_matmuls_around_fused_layernorm_and_gelu(matmul, tmp_path, skip_layernorm_faster):
    model = transformer_block(opset=14)
    result = compile_target(model, "ort-int8", tokens(16, 0), f"quantize-int8.matmul={matmul}")
    q, report = result.model, result.report.artifacts["quantize"]
    ops = histogram(q)
    assert ops["com.microsoft.SkipLayerNormalization"] == 2 and ops["com.microsoft.Gelu"] == 1
    assert not {"ReduceMean", "Erf", "Sqrt", "Pow"} & set(ops)
    assert report["int8_nodes"] >= len(WEIGHTED) and report["float_layers"] == []
    if matmul == "dynamic":
        fused = ort_optimized_ops(q, tmp_path)  # Q, K and V share one DynamicQuantizeLinear of x there
        assert ops["MatMulInteger"] == len(WEIGHTED) and fused["DynamicQuantizeMatMul"] + fused["MatMulIntegerToFloat"] == len(WEIGHTED)
    else:
        weights = {n.name for n in q.graph.node if n.op_type == "MatMul" and n.input[1].endswith("_dequantized") and n.input[0].endswith("_dequantized")}
        assert weights == WEIGHTED
        assert ort_optimized_ops(q, tmp_path)["QLinearMatMul"] == len(WEIGHTED)
    assert mean_cosine(model, q, tokens(8, 7)) > 0.999


def test_trt_int8_fuses_with_standard_ops_and_passes_the_tensorrt_rules():
    model = transformer_block(opset=14)
    q = compile_target(model, "trt-int8", tokens(16, 0)).model
    ops = histogram(q)
    assert not any(n.domain not in ("", "ai.onnx") for n in q.graph.node)
    assert ops["LayerNormalization"] == 2 and ops["Gelu"] == 1 and "ReduceMean" not in ops
    producer = {o: n for n in q.graph.node for o in n.output}
    int8 = {n.name for n in q.graph.node if n.op_type == "MatMul" and producer[n.input[1]].op_type == "DequantizeLinear"}
    assert int8 == WEIGHTED
    assert check_trt_qdq(q) == []
    assert check_model(q, precision="int8").errors == []
    assert mean_cosine(model, q, tokens(8, 7)) > 0.999


def mlp_2d(gemm_trans_b=None, seed=0):
    """Two dense layers on 2-D activations: MatMul + Add (fusion turns them into Gemm), or Gemm itself."""
    r = np.random.default_rng(seed)
    w1, w2 = r.standard_normal((64, 128)) / 8, r.standard_normal((128, 64)) / 11
    inits = [init("b1", r.normal(0, 0.1, 128).astype(np.float32)), init("b2", r.normal(0, 0.1, 64).astype(np.float32))]
    if gemm_trans_b is None:
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
                 helper.make_node("Relu", ["hb"], ["a"], name="act"), helper.make_node("MatMul", ["a", "w2"], ["o"], name="fc2"),
                 helper.make_node("Add", ["o", "b2"], ["ob"], name="bias2")]
    else:
        w1, w2 = (w1.T, w2.T) if gemm_trans_b else (w1, w2)
        nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["hb"], name="fc1", transB=gemm_trans_b),
                 helper.make_node("Relu", ["hb"], ["a"], name="act"),
                 helper.make_node("Gemm", ["a", "w2", "b2"], ["ob"], name="fc2", transB=gemm_trans_b)]
    nodes.append(helper.make_node("Tanh", ["ob"], ["y"], name="tanh"))
    inits += [init("w1", np.ascontiguousarray(w1, np.float32)), init("w2", np.ascontiguousarray(w2, np.float32))]
    return make_model(nodes, [tensor("x", [6, 64])], [tensor("y", [6, 64])], inits)


def rows(n, seed):
    r = np.random.default_rng(seed)
    return [{"x": (r.standard_normal((6, 64)) * np.linspace(0.2, 2, 64)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_dynamic_gemm_runs_as_one_dynamic_quantize_matmul_with_its_bias(trans_b, tmp_path):
    model = mlp_2d(gemm_trans_b=trans_b)
    q = compile_int8(model, rows(12, 1), matmul="dynamic", final_layer="int8").model
    ops = histogram(q)
    assert ops["MatMulInteger"] == 2 and "Gemm" not in ops and "QuantizeLinear" not in ops
    fused = ort_optimized_ops(q, tmp_path)
    assert fused["DynamicQuantizeMatMul"] == 2 and "Add" not in fused  # the bias went into the kernel
    assert mean_cosine(model, q, rows(8, 9)) > 0.9995


def test_ort_int8_recipe_still_chooses_dynamic_or_static_for_a_fused_gemm():
    model = mlp_2d()
    result = compile_target(model, "ort-int8", rows(16, 1), "quantize-int8.final_layer=int8")
    report = result.report.artifacts["quantize"]
    assert histogram(onnxopt.compile(model, target="ort-fp32", profile=False, save=False).model)["Gemm"] == 2
    mode = report["matmul_mode"]
    assert mode.startswith(("static (drop", "dynamic (drop"))  # the fused Gemms were candidates for both
    chosen, other = (float(part.split()[-1].rstrip(")")) for part in mode.split(" vs "))
    assert chosen <= other
    assert mean_cosine(model, result.model, rows(8, 9)) > 0.999
