"""Per-channel constant Mul/Add/Sub/Div after a conv folded into it; what must not fold."""

import numpy as np
import pytest

from tests.passes.fusion.fusion_helpers import floats, fused, init, make_model, node, tensor, untouched


def conv_then(op_nodes, inits, out_shape=(1, 4, 6, 6), conv_op="Conv", weight_shape=(4, 3, 3, 3)):
    nodes = [node(conv_op, ["x", "w"], ["c"], pads=[1, 1, 1, 1])] + op_nodes
    return make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", list(out_shape))], [init("w", floats(weight_shape))] + inits)


def test_mul_add_sub_div_chain_folds_into_one_conv():
    nodes = [node("Mul", ["c", "s"], ["m"]), node("Add", ["a", "m"], ["p"]), node("Sub", ["p", "k"], ["q"]), node("Div", ["q", "d"], ["y"])]
    inits = [init("s", floats((1, 4, 1, 1), 1)), init("a", floats((4, 1, 1), 2)), init("k", np.float32(0.25)), init("d", floats((4, 1, 1), 3, low=0.5))]
    out, result = fused(conv_then(nodes, inits), ["Conv"], pass_name="fold-conv-affine")
    assert sum(result.stats.values()) == 4


def test_bias_add_folds_into_conv_transpose():
    nodes = [node("ConvTranspose", ["x", "w"], ["c"]), node("Add", ["c", "b"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 2, 6, 6])], [init("w", floats((3, 2, 3, 3))), init("b", floats((1, 2, 1, 1), 4))])
    fused(model, ["ConvTranspose"], pass_name="fold-conv-affine")


@pytest.mark.parametrize("shape", [(1, 4, 6, 6), (2, 4, 1, 1), (1, 1, 1, 1, 1)])
def test_mul_that_is_not_per_channel_or_broadcasts_stays(shape):
    out_shape = np.broadcast_shapes((1, 4, 6, 6), shape)
    model = conv_then([node("Mul", ["c", "s"], ["y"])], [init("s", floats(shape, 5))], out_shape=out_shape)
    untouched(model, pass_name="fold-conv-affine")


def test_constant_minus_conv_and_constant_over_conv_stay():
    nodes = [node("Sub", ["k", "c"], ["s"]), node("Div", ["k", "s"], ["y"])]
    untouched(conv_then(nodes, [init("k", floats((1, 4, 1, 1), 6, low=3.0))]), pass_name="fold-conv-affine")


def test_non_constant_operand_stays():
    nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), node("Mul", ["c", "s"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 3, 6, 6]), tensor("s", [1, 4, 1, 1])], [tensor("y", [1, 4, 6, 6])], [init("w", floats((4, 3, 3, 3)))])
    untouched(model, pass_name="fold-conv-affine")


def test_shared_weight_stays():
    nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), node("Mul", ["c", "s"], ["m"]), node("Conv", ["m", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [1, 4, 6, 6])], [init("w", floats((4, 4, 3, 3))), init("s", floats((4, 1, 1), 1))])
    untouched(model, pass_name="fold-conv-affine")


def test_division_by_zero_channel_stays():
    untouched(conv_then([node("Div", ["c", "d"], ["y"])], [init("d", np.array([1, 0, 2, 3], np.float32).reshape(4, 1, 1))]), pass_name="fold-conv-affine")
