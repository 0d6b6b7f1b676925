"""Small graphs for the TensorRT checker, backend and float16 tests, built with onnx.helper."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from tests.conftest import init, make_model, tensor


def conv_net(batch="N", seed=0, opset=17):
    """Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a tiny classifier."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = [
        init("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
        init("b1", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("w2", rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2),
        init("b2", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("wf", rng.standard_normal((5, 8)).astype(np.float32) * 0.5),
        init("bf", rng.standard_normal(5).astype(np.float32) * 0.1),
    ]
    return make_model(nodes, [tensor("x", [batch, 3, 8, 8])], [tensor("y", [batch, 5])], inits, opset=opset)


def qdq_conv(
    *,
    zero_point=0,
    weight_axis=0,
    qtype=np.int8,
    qdq_on_output=False,
    q_as_output=False,
    per_channel_activation=False,
    unpaired=False,
    batch=1,
):
    """x -> Q/DQ -> Conv(DQ(int8 W, per-channel)) -> Relu [-> Q/DQ] -> y, as a quantizer emits for TensorRT."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    axis_size = weight.shape[weight_axis]
    w_scale = (np.abs(weight).max(axis=tuple(a for a in range(4) if a != weight_axis)) / 127).astype(np.float32)
    shape = [1] * 4
    shape[weight_axis] = axis_size
    w_q = np.clip(np.round(weight / w_scale.reshape(shape)), -127, 127).astype(np.int8)
    act_scale = np.full(3, 0.03, np.float32) if per_channel_activation else np.float32(0.03)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_x", **({"axis": 1} if per_channel_activation else {})),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_x", **({"axis": 1} if per_channel_activation else {})),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=weight_axis, name="dq_w"),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r" if qdq_on_output or unpaired or q_as_output else "y"], name="relu"),
    ]
    zp_act = np.full(np.shape(act_scale), zero_point, qtype)
    inits = [
        init("xs", act_scale),
        init("xz", zp_act),
        init("wq", w_q),
        init("ws", w_scale),
        init("wz", np.zeros(axis_size, np.int8)),
    ]
    if qdq_on_output:
        nodes += [
            helper.make_node("QuantizeLinear", ["r", "os", "oz"], ["rq"], name="q_out"),
            helper.make_node("DequantizeLinear", ["rq", "os", "oz"], ["y"], name="dq_out"),
        ]
        inits += [init("os", np.float32(0.02)), init("oz", np.int8(0))]
    if q_as_output:
        nodes.append(helper.make_node("QuantizeLinear", ["r", "os", "oz"], ["y"], name="q_out"))
        inits += [init("os", np.float32(0.02)), init("oz", np.int8(0))]
        out_type = TensorProto.INT8
    else:
        out_type = TensorProto.FLOAT
    if unpaired:
        nodes += [
            helper.make_node("QuantizeLinear", ["r", "os", "oz"], ["rq"], name="q_lonely"),
            helper.make_node("Cast", ["rq"], ["y"], to=TensorProto.FLOAT, name="cast"),
        ]
        inits += [init("os", np.float32(0.02)), init("oz", np.int8(0))]
    return make_model(nodes, [tensor("x", [batch, 3, 8, 8])], [tensor("y", [batch, 4, 8, 8], out_type)], inits)
