"""Q/DQ placement per target on small graphs: structure (which ops, which axes) and numbers."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxopt.errors import CalibrationError
from onnxopt.passes.quantize.trt_rules import check_trt_qdq
from tests.conftest import init, make_model, tensor
from tests.passes.quantize.qmodels import compile_int8, conv_net, images, mean_cosine, ops


def ort_fused_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node)


def consumers(model, name):
    return [n for n in model.graph.node if name in n.input]


def producer(model, name):
    return next((n for n in model.graph.node if name in n.output), None)


def initializer(model, name):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_ort_int8_places_qdq_where_ort_fuses_int8_kernels(tmp_path):
    model, data = conv_net(), images(16)
    result = compile_int8(model, data, max_drop=-1.0, final_layer="float")  # placement only: no accuracy fallback
    q = result.model
    # every Conv reads a DequantizeLinear on both inputs and its (post-Relu) output is quantized
    for conv in (n for n in q.graph.node if n.op_type == "Conv"):
        assert producer(q, conv.input[0]).op_type == "DequantizeLinear"
        assert producer(q, conv.input[1]).op_type == "DequantizeLinear"
        bias_dq = producer(q, conv.input[2])
        assert bias_dq.op_type == "DequantizeLinear" and initializer(q, bias_dq.input[0]).dtype == np.int32
    relu = next(n for n in q.graph.node if n.op_type == "Relu")
    assert [c.op_type for c in consumers(q, relu.output[0])] == ["QuantizeLinear"]
    zero = initializer(q, consumers(q, relu.output[0])[0].input[2])
    assert zero.dtype == np.uint8 and zero == 0 and zero.shape == ()  # ReLU output: zero point 0, scalar
    # fragile ops stay float, and the final classifier when asked
    assert producer(q, "logits").op_type == "Softmax"
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    assert producer(q, gemm.input[1]) is None  # float weight, no DequantizeLinear
    fused = ort_fused_ops(q, tmp_path)
    assert fused["QLinearConv"] == 2 and fused["QLinearAdd"] == 1 and fused["QLinearGlobalAveragePool"] == 1
    assert mean_cosine(model, q, images(16, seed=7)) > 0.995
    report = result.report.artifacts["quantize"]
    assert report["rules"] == "ort" and {f["node"] for f in report["float_layers"]} == {"fc"}


def test_trt_int8_follows_tensorrts_explicit_quantization_rules():
    model, data = conv_net(), images(16)
    q = compile_int8(model, data, target="trt-int8", final_layer="float").model
    assert check_trt_qdq(q) == []
    for node in (n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        assert initializer(q, node.input[2]).dtype in (np.int8,) and not initializer(q, node.input[2]).any()
    # Q/DQ only on Conv inputs and the residual branch of the Add: the Relu output reaches the Add through DQ,
    # conv2's output (fused into conv2 by TensorRT) reaches it directly
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert producer(q, add.input[0]).op_type == "Conv"
    assert producer(q, add.input[1]).op_type == "DequantizeLinear"
    assert producer(q, "logits").op_type == "Softmax"
    assert not any(producer(q, n.input[0]).op_type == "DequantizeLinear" for n in q.graph.node if n.op_type in ("GlobalAveragePool", "Flatten"))
    assert ops(q).count("QuantizeLinear") == 2  # x, and the relu output (one Q, read by conv2 and the add)
    assert mean_cosine(model, q, images(16, seed=7)) > 0.995


def test_trt_checker_catches_broken_rules():
    q = compile_int8(conv_net(), images(8), target="ort-int8").model
    problems = check_trt_qdq(q)
    assert any("zero point is uint8" in p for p in problems)


def weighted_model(op, **attrs):
    r = np.random.default_rng(0)
    if op == "Conv":
        w, x, y = r.standard_normal((6, 4, 3, 3)), [1, 4, 6, 6], [1, 6, 4, 4]
    elif op == "ConvTranspose":
        w, x, y = r.standard_normal((4, 6, 3, 3)), [1, 4, 6, 6], [1, 6, 8, 8]
    elif op == "Gemm":
        w = r.standard_normal((6, 4)) if attrs.get("transB") else r.standard_normal((4, 6))
        x, y = [2, 4], [2, 6]
    else:
        w, x, y = r.standard_normal((4, 6)), [2, 3, 4], [2, 3, 6]
    w = (w * np.linspace(0.1, 3, w.shape[0 if op in ("Conv",) or attrs.get("transB") else 1]).reshape(
        (-1,) + (1,) * (w.ndim - 1) if op == "Conv" or attrs.get("transB") else (1, -1) + (1,) * (w.ndim - 2))).astype(np.float32)
    node = helper.make_node(op, ["x", "w"], ["h"], **attrs)
    relu = helper.make_node("Relu", ["h"], ["y"])
    return make_model([node, relu], [tensor("x", x)], [tensor("y", y)], [init("w", w)]), w, x


@pytest.mark.parametrize(
    "op, attrs, axis",
    [("Conv", {}, 0), ("ConvTranspose", {}, 1), ("Gemm", {"transB": 1}, 0), ("Gemm", {}, 1), ("MatMul", {}, 1)],
)
def test_per_channel_weight_axis_is_the_output_channel(op, attrs, axis):
    model, w, x_shape = weighted_model(op, **attrs)
    data = [{"x": np.random.default_rng(i).standard_normal(x_shape).astype(np.float32)} for i in range(8)]
    for target in ("trt-int8", "ort-int8"):
        q = compile_int8(model, data, target=target, final_layer="int8", matmul="static", reduce_range="off", max_drop=-1.0).model
        layer = next(n for n in q.graph.node if n.op_type == op)
        dq = producer(q, layer.input[1])
        assert dq.op_type == "DequantizeLinear"
        assert next(a.i for a in dq.attribute if a.name == "axis") == axis
        scales, values = initializer(q, dq.input[1]), initializer(q, dq.input[0])
        assert values.dtype == np.int8 and scales.shape == (w.shape[axis],)
        np.testing.assert_allclose(scales, np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1) / 127, rtol=0.5)
        dequantized = values * scales.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
        assert np.abs(dequantized - w).max() <= 4 * scales.max()  # GPTQ may move a weight a few steps
        if target == "trt-int8":
            assert check_trt_qdq(q) == []


def concat_model():
    r = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
        helper.make_node("Conv", ["a", "wc"], ["c"], name="conv_c"),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="concat"),
        helper.make_node("Conv", ["cat", "wd"], ["d"], name="conv_d"),
        helper.make_node("Add", ["c", "d"], ["y"], name="sum"),
    ]
    inits = [init(n, (r.standard_normal(s) * k).astype(np.float32)) for n, s, k in
             [("wa", (4, 3, 1, 1), 0.2), ("wb", (4, 3, 1, 1), 3.0), ("wc", (4, 4, 1, 1), 1.0), ("wd", (4, 8, 1, 1), 1.0)]]
    return make_model(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y", [1, 4, 5, 5])], inits)


def test_trt_shares_one_scale_around_a_concat():
    model = concat_model()
    data = [{"x": np.random.default_rng(i).standard_normal((1, 3, 5, 5)).astype(np.float32)} for i in range(8)]
    q = compile_int8(model, data, target="trt-int8").model
    assert check_trt_qdq(q) == []
    quantized = {n.input[0]: float(initializer(q, n.input[1])) for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert {"a", "cat"} <= set(quantized) and quantized["a"] == quantized["cat"]
    assert mean_cosine(model, q, data) > 0.99


def test_keep_float_and_missing_calibration():
    model, data = conv_net(), images(8)
    q = compile_int8(model, data, keep_float=("conv2",)).model
    conv2 = next(n for n in q.graph.node if n.op_type == "Conv" and n.name == "conv2")
    assert producer(q, conv2.input[1]) is None  # float weights
    import onnxopt

    from tests.passes.quantize.qmodels import quant_recipe

    with pytest.raises(CalibrationError, match="needs calibration data"):
        onnxopt.compile(model, recipe=quant_recipe(), profile=False, verify="off")


def test_a_float_layer_stays_float_when_ort_loads_the_model(tmp_path):
    """ORT quantizes the float weights of a Conv that reads a per-tensor DQ (WeightBiasQuantization);
    a layer the quantizer keeps float reads a per-channel DQ instead, so ORT runs it in float."""
    from onnxopt.passes.quantize.fidelity import run_all

    model, data = conv_net(), images(8)
    q = compile_int8(model, data, keep_float=("conv2",), reduce_range="on", max_drop=-1.0).model
    conv2 = next(n for n in q.graph.node if n.name == "conv2")
    dq = producer(q, conv2.input[0])
    assert dq.op_type == "DequantizeLinear" and any(a.name == "axis" for a in dq.attribute)
    assert initializer(q, dq.input[1]).shape == (8,)
    fused = ort_fused_ops(q, tmp_path)
    assert fused["QLinearConv"] == 1 and fused["Conv"] + fused["FusedConv"] >= 1  # conv1 int8, conv2 float
    for a, b in zip(run_all(q, data), run_all(q, data, opt_level="disable")):
        np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-4, atol=1e-5)


def test_nothing_to_quantize_leaves_the_graph_alone():
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    result = compile_int8(model, [{"x": np.ones((1, 4), np.float32)}])
    assert ops(result.model) == ["Softmax"]
    assert any("nothing to quantize" in w for w in result.report.warnings)


def test_ort_passes_int8_through_maxpool_with_one_shared_scale(tmp_path):
    r = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["y"], name="gap"),
    ]
    inits = [init("w1", (r.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)), init("w2", (r.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32))]
    model = make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 8, 1, 1])], inits)
    q = compile_int8(model, images(12)).model
    pool = next(n for n in q.graph.node if n.op_type == "MaxPool")
    dq_in, q_out = producer(q, pool.input[0]), consumers(q, pool.output[0])[0]
    assert q_out.op_type == "QuantizeLinear"
    assert initializer(q, dq_in.input[1]) == initializer(q, q_out.input[1])  # bit-identical scale
    assert initializer(q, dq_in.input[2]) == initializer(q, q_out.input[2])
    fused = ort_fused_ops(q, tmp_path)
    assert fused["QLinearConv"] == 2 and fused["NhwcMaxPool"] == 1 and "MaxPool" not in fused
    assert mean_cosine(model, q, images(12, seed=5)) > 0.995


def test_trt_fallback_of_a_conv_before_a_residual_add_keeps_a_valid_plan():
    model, data = conv_net(with_softmax=False), images(16)
    q = compile_int8(model, data, target="trt-int8", keep_float=("conv2",), options={"max_drop": 0.0}, max_fallback=1.0).model
    assert check_trt_qdq(q) == []


def test_reduced_range_keeps_ort_weights_within_7_bits_except_depthwise():
    """On x86 without VNNI ORT's u8 x s8 GEMM kernels saturate int16 pair sums; 7-bit weights cannot."""
    from onnxopt.models.builders import mobilenet_v2_shaped

    model = mobilenet_v2_shaped(input_size=32, num_classes=10)
    data = [{"input": d["x"]} for d in images(4, shape=(1, 3, 32, 32))]
    q = compile_int8(model, data, reduce_range="on", rounding="nearest", max_drop=-1.0).model
    depthwise = {n.input[1] for n in q.graph.node if n.op_type == "Conv" and next((a.i for a in n.attribute if a.name == "group"), 1) > 1}
    checked = 0
    for node in (n for n in q.graph.node if n.op_type == "DequantizeLinear"):
        values = initializer_or_none(q, node.input[0])
        if values is None or values.dtype != np.int8 or node.output[0] in depthwise:
            continue
        assert np.abs(values).max() <= 63
        checked += 1
    assert checked > 10
    from onnxopt.passes.quantize.fidelity import mean_cosine, run_all

    assert mean_cosine(run_all(q, data, opt_level="disable"), run_all(q, data, opt_level="all")) > 0.999  # the fused kernels agree with the Q/DQ graph


def initializer_or_none(model, name):
    return next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name), None)
