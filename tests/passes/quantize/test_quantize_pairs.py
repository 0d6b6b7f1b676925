"""Saturation-free 8-bit weights for ORT's AVX2 int8 kernels (passes/quantize/pairs.py).

The kernel facts pairs.py rests on are checked against the installed ONNX Runtime on CPUs where
they apply (x86 without VNNI); the rest is checked everywhere.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxopt.passes.quantize.fidelity import mean_cosine, run_all
from onnxopt.passes.quantize.latency import needs_reduced_range
from onnxopt.passes.quantize.pairs import clip_pairs, kernel_order, pair_safe_scales, pair_sums
from tests.conftest import init, make_model, tensor
from tests.passes.quantize.qmodels import compile_int8, images

saturating_cpu = pytest.mark.skipif(not needs_reduced_range(), reason="ORT's u8s8 kernels saturate only on x86 without VNNI")


def _qdq_conv(weight_q: np.ndarray) -> "onnx.ModelProto":  # noqa: F821
    """x -> Q/DQ (uint8, scale 1) -> Conv with int8 weights (scale 1) -> Q/DQ (int8, scale 1024)."""
    cout, cin, k, _ = weight_q.shape
    inits = [
        init("xs", np.array(1.0, np.float32)), init("xz", np.array(0, np.uint8)), init("wq", weight_q.astype(np.int8)),
        init("ws", np.ones(cout, np.float32)), init("wz", np.zeros(cout, np.int8)),
        init("ys", np.array(1024.0, np.float32)), init("yz", np.array(0, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[k // 2] * 4),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]), helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"]),
    ]
    return make_model(nodes, [tensor("x", [1, cin, 3, 3])], [tensor("y", [1, cout, 3, 3])], inits)


def _centre(model, fused: bool) -> float:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    cin = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    return float(session.run(None, {"x": np.full((1, cin, 3, 3), 255, np.float32)})[0][0, 0, 1, 1])


@saturating_cpu
@pytest.mark.parametrize(("cin", "k", "large", "saturates"), [
    (4, 1, [(0, 0, 0), (1, 0, 0)], True),  # K positions 0 and 1: one pair
    (4, 1, [(0, 0, 0), (2, 0, 0)], False),  # two pairs
    (4, 1, [(1, 0, 0), (2, 0, 0)], False),  # positions 1 and 2: neighbours, but in different pairs
    (2, 3, [(0, 0, 0), (1, 0, 0)], True),  # K runs (kh, kw, c): c0 and c1 at one tap are a pair
    (2, 3, [(0, 0, 0), (0, 0, 1)], False),  # one channel at two taps is not
    (3, 3, [(2, 0, 0), (0, 0, 1)], True),  # odd C: pairs straddle taps (positions 2 and 3)
])
def test_ort_kernels_saturate_exactly_the_pairs_pairs_py_bounds(cin, k, large, saturates):
    weight = np.zeros((1, cin, k, k))
    for c, i, j in large:
        weight[0, c, i, j] = 127
    exact, fused = _centre(_qdq_conv(weight), fused=False), _centre(_qdq_conv(weight), fused=True)
    assert exact == pytest.approx(2 * 255 * 127, abs=1024)
    assert (fused < exact - 10000) == saturates
    order = kernel_order("Conv", weight.shape)
    matrix = weight.reshape(1, 1, -1) if order is None else weight.reshape(1, 1, -1)[..., order]
    assert (pair_sums(matrix).max() > 128) == saturates


def test_kernel_order_puts_channels_innermost():
    order = kernel_order("Conv", (4, 2, 3, 3))
    matrix_index = np.arange(18).reshape(2, 3, 3)  # (c, kh, kw) as rounding.matrix_view flattens it
    assert list(order[:4]) == [matrix_index[0, 0, 0], matrix_index[1, 0, 0], matrix_index[0, 0, 1], matrix_index[1, 0, 1]]
    assert kernel_order("Conv", (4, 2, 1, 1)) is None and kernel_order("MatMul", (8, 4)) is None


def test_pair_safe_scales_and_clip_pairs_bound_every_pair():
    r = np.random.default_rng(0)
    matrix = r.standard_normal((1, 6, 10))
    matrix[0, :, 1] = matrix[0, :, 0] = 3.0  # a large pair in every row
    base = np.abs(matrix).max(axis=-1) / 127
    scales = pair_safe_scales(matrix, base)
    q = np.clip(np.round(matrix / scales[..., None]), -127, 127)
    assert pair_sums(q).max() <= 128 and (scales >= base).all()
    drifted = np.array([[[120, -20, 5, 5, 127, 1]]])
    clipped = clip_pairs(drifted)
    assert pair_sums(clipped).max() <= 128
    assert clipped.tolist() == [[[108, -20, 5, 5, 127, 1]]]


def _saturation_prone_net():
    """Conv 1x1 whose input channels 0 and 1 carry the same large positive signal into weights
    that are large side by side: plain 8-bit weights overflow ORT's int16 pair sums."""
    r = np.random.default_rng(4)
    w1 = np.abs(r.standard_normal((8, 3, 3, 3))).astype(np.float32) * 0.05
    w1[0:2] = 0.3  # channels 0 and 1: the largest activations, near the top of the uint8 range
    w2 = (r.standard_normal((6, 8, 1, 1)) * 0.05).astype(np.float32)
    w2[:, 0:2] = 1.0
    b2 = np.full(6, -40.0, np.float32)  # outputs straddle zero: the output range does not clip the overflow away
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["y"], name="gap"),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 6, 1, 1])], [init("w1", w1), init("w2", w2), init("b2", b2)])


def _conv_weights_in_kernel_order(model):
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in (n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dq):
        values = tensors[dq[node.input[1]].input[0]]
        order = kernel_order("Conv", values.shape)
        matrix = values.reshape(1, values.shape[0], -1).astype(np.int64)
        yield node.name, matrix if order is None else matrix[..., order]


@saturating_cpu
@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_pairs_mode_runs_the_same_numbers_fused_as_written_where_plain_8_bit_does_not(rounding):
    model = _saturation_prone_net()
    data = [{"x": d["x"] * 4 + 4} for d in images(12)]
    fused_vs_written = {}
    for mode in ("off", "pairs"):
        q = compile_int8(model, data, reduce_range=mode, rounding=rounding, max_drop=-1.0).model
        fused_vs_written[mode] = mean_cosine(run_all(q, data, opt_level="disable"), run_all(q, data, opt_level="all"))
        if mode == "pairs":
            weights = dict(_conv_weights_in_kernel_order(q))
            assert set(weights) == {"conv1", "conv2"}
            assert all(pair_sums(m).max() <= 128 for m in weights.values())
            assert np.abs(weights["conv1"]).max() > 100  # 8-bit resolution, not 7-bit
            assert mean_cosine(run_all(model, data), run_all(q, data)) > 0.99
    assert fused_vs_written["off"] < 0.99
    assert fused_vs_written["pairs"] > 0.9999


def test_pairs_is_the_automatic_weight_range_on_saturating_cpus():
    model = _saturation_prone_net()
    result = compile_int8(model, [{"x": d["x"] * 4 + 4} for d in images(8)], max_drop=-1.0)
    expected = "8-bit, adjacent pairs" if needs_reduced_range() else "8-bit (-127..127)"
    assert result.report.artifacts["quantize"]["weight_range"].startswith(expected)
