"""Div by a constant: rewritten to Mul only where one ulp cannot change a later rounding, and a
scalar constant stays a scalar (regressions from the expanded DynamicQuantizeLinear node tests)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.passes.fusion.fusion_helpers import (
    fuse,
    fused,
    init,
    make_model,
    ops,
    tensor,
)


def _div_then(op_after, divisor, out_type=TensorProto.FLOAT):
    nodes = [helper.make_node("Div", ["x", "c"], ["q"]), helper.make_node(op_after, ["q"], ["y"])]
    return make_model(nodes, [tensor("x", [64])], [tensor("y", [64], out_type)], [init("c", np.array(divisor, np.float32))])


def test_div_before_round_keeps_its_division():
    """x / 255 then Round: x * (1/255) is one ulp off for some x, and Round flips on it."""
    out, result = fuse(_div_then("Round", 255.0), pass_name="simplify-arithmetic")
    assert ops(out) == ["Div", "Round"] and not result.changed
    x = (np.arange(64, dtype=np.float32) + 0.5) * 255.0  # quotients exactly at .5: the rounding boundary
    import onnxruntime as ort

    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(out), run(_div_then("Round", 255.0)))


def test_div_by_a_power_of_two_before_round_becomes_mul():
    fused(_div_then("Round", 8.0), ["Mul", "Round"], pass_name="simplify-arithmetic")


def test_div_without_rounding_downstream_becomes_mul():
    fused(_div_then("Relu", 255.0), ["Mul", "Relu"], pass_name="simplify-arithmetic")


def test_scalar_reciprocal_stays_a_scalar():
    """The reciprocal of a scalar divisor had shape [1], which turned a scalar output into [1]."""
    model = make_model([helper.make_node("Div", ["x", "c"], ["y"])], [tensor("x", [])], [tensor("y", [])], [init("c", np.array(3.0, np.float32))])
    out, _ = fused(model, ["Mul"], pass_name="simplify-arithmetic")
    constant = out.graph.initializer[0]
    assert numpy_helper.to_array(constant).shape == ()
