"""Layout chains (Transpose, reshape-like ops), no-op removal, arithmetic with constants, CSE."""

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

from tests.conftest import assert_same_outputs
from tests.passes.fusion.fusion_helpers import floats, fuse, fused, init, make_model, node, ops, tensor, untouched


def relu_after(nodes, x_shape, out_shape, inits=(), last="t"):
    """Wrap a chain between a Relu (so inputs are not graph inputs) and a final Relu."""
    body = [node("Relu", ["x"], ["r"])] + nodes + [node("Relu", [last], ["y"])]
    return make_model(body, [tensor("x", x_shape)], [tensor("y", out_shape)], list(inits))


def test_transpose_pair_merges_into_one():
    model = relu_after([node("Transpose", ["r"], ["a"], perm=[0, 2, 1, 3]), node("Transpose", ["a"], ["t"], perm=[0, 1, 3, 2])], [1, 2, 3, 4], [1, 3, 4, 2])
    out, _ = fused(model, ["Relu", "Transpose", "Relu"], pass_name="simplify-layout")
    assert list(out.graph.node[1].attribute[0].ints) == [0, 2, 3, 1]


def test_inverse_transposes_cancel_even_into_a_graph_output():
    nodes = [node("Relu", ["x"], ["r"]), node("Transpose", ["r"], ["a"], perm=[0, 2, 1]), node("Transpose", ["a"], ["y"], perm=[0, 2, 1])]
    model = make_model(nodes, [tensor("x", [2, 3, 4])], [tensor("y", [2, 3, 4])])
    out, _ = fused(model, ["Relu"], pass_name="simplify-layout")
    assert out.graph.node[0].output[0] == "y"


def test_transposes_stay_when_the_middle_is_a_graph_output():
    nodes = [node("Transpose", ["x"], ["a"], perm=[1, 0]), node("Transpose", ["a"], ["y"], perm=[1, 0])]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3]), tensor("a", [3, 2])])
    untouched(model, pass_name="simplify-layout")


def test_reshape_like_chain_collapses_into_the_last_reshape():
    nodes = [node("Flatten", ["r"], ["f"], axis=1), node("Unsqueeze", ["f", "ax"], ["u"]), node("Reshape", ["u", "shape"], ["t"])]
    model = relu_after(nodes, ["N", 2, 3], ["N", 3, 2], [init("ax", np.array([0], np.int64)), init("shape", np.array([-1, 3, 2], np.int64))])
    fused(model, ["Relu", "Reshape", "Relu"], pass_name="simplify-layout", shapes={"x": (2, 2, 3)})


def test_reshape_with_zero_after_reshape_stays():
    nodes = [node("Reshape", ["r", "s1"], ["a"]), node("Reshape", ["a", "s2"], ["t"])]
    model = relu_after(nodes, [2, 6], [3, 2, 2], [init("s1", np.array([3, 4], np.int64)), init("s2", np.array([0, 2, 2], np.int64))])
    untouched(model, pass_name="simplify-layout")


def test_unsqueezes_merge_their_axes():
    nodes = [node("Unsqueeze", ["r", "a1"], ["u"]), node("Unsqueeze", ["u", "a2"], ["t"])]
    model = relu_after(nodes, ["N", 5], [1, "N", 1, 5, 1], [init("a1", np.array([1], np.int64)), init("a2", np.array([0, -1], np.int64))])
    out, _ = fused(model, ["Relu", "Unsqueeze", "Relu"], pass_name="simplify-layout", shapes={"x": (3, 5)})
    axes = [i for i in out.graph.initializer if i.name == out.graph.node[1].input[1]][0]
    assert numpy_helper.to_array(axes).tolist() == [0, 2, 4]


def test_reshape_target_built_from_its_own_shape_becomes_constant():
    nodes = [
        node("Shape", ["r"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0), node("Unsqueeze", ["n", "ax"], ["n1"]),
        node("Concat", ["n1", "minus1"], ["shape"], axis=0), node("Reshape", ["r", "shape"], ["t"]),
    ]
    inits = [init("zero", np.array(0, np.int64)), init("ax", np.array([0], np.int64)), init("minus1", np.array([-1], np.int64))]
    model = relu_after(nodes, ["N", 3, 4], ["N", 12], inits)
    fused(model, ["Relu", "Reshape", "Relu"], pass_name="simplify-layout", shapes={"x": (5, 3, 4)})


def test_reshape_target_from_another_tensor_with_unknown_relation_stays():
    nodes = [
        node("Shape", ["z"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0), node("Unsqueeze", ["n", "ax"], ["n1"]),
        node("Concat", ["n1", "minus1"], ["shape"], axis=0), node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [init("zero", np.array(0, np.int64)), init("ax", np.array([0], np.int64)), init("minus1", np.array([-1], np.int64))]
    model = make_model(nodes, [tensor("x", ["A", 4]), tensor("z", ["B", 2])], [tensor("y", ["B", "C"])], inits)
    out, result = fuse(model, "simplify-layout")
    assert ops(out) == ops(model) and not result.changed


def test_one_unprovable_dim_of_a_reshape_target_becomes_minus_one():
    """x [A, 12] reshaped to [z.shape[0], 3, 4]: wherever the model runs, A*12 = z0*12 forces the
    -1 to z's first dim, so the target is constant [-1, 3, 4] and Shape/Gather/Concat go."""
    nodes = [
        node("Shape", ["z"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0), node("Unsqueeze", ["n", "ax"], ["n1"]),
        node("Concat", ["n1", "rest"], ["shape"], axis=0), node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [init("zero", np.array(0, np.int64)), init("ax", np.array([0], np.int64)), init("rest", np.array([3, 4], np.int64))]
    model = make_model(nodes, [tensor("x", ["A", 12]), tensor("z", ["B", 2])], [tensor("y", ["B", 3, 4])], inits)
    out, _ = fused(model, ["Reshape"], pass_name="simplify-layout", shapes={"x": (5, 12), "z": (5, 2)})
    target = [i for i in out.graph.initializer if i.name == out.graph.node[0].input[1]][0]
    assert numpy_helper.to_array(target).tolist() == [-1, 3, 4]


NOOPS = {
    "cast": ([node("Cast", ["r"], ["t"], to=TensorProto.FLOAT)], []),
    "slice": ([node("Slice", ["r", "st", "en", "axes"], ["t"])], [init("st", np.array([0], np.int64)), init("en", np.array([2**63 - 1], np.int64)), init("axes", np.array([1], np.int64))]),
    "expand": ([node("Expand", ["r", "shape"], ["t"])], [init("shape", np.array([1, 1], np.int64))]),
    "pad": ([node("Pad", ["r", "pads"], ["t"])], [init("pads", np.zeros(4, np.int64))]),
    "concat": ([node("Concat", ["r"], ["t"], axis=0)], []),
    "transpose": ([node("Transpose", ["r"], ["t"], perm=[0, 1])], []),
    "mul-one": ([node("Mul", ["one", "r"], ["t"])], [init("one", np.ones((1, 4), np.float32))]),
    "div-one": ([node("Div", ["r", "one"], ["t"])], [init("one", np.float32(1))]),
    "add-zero": ([node("Add", ["r", "zero"], ["t"])], [init("zero", np.zeros(4, np.float32))]),
    "sub-zero": ([node("Sub", ["r", "zero"], ["t"])], [init("zero", np.zeros((1, 1), np.float32))]),
}


@pytest.mark.parametrize("case", sorted(NOOPS))
def test_noop_is_removed(case):
    nodes, inits = NOOPS[case]
    fused(relu_after(nodes, [3, 4], [3, 4], inits), ["Relu", "Relu"], pass_name="remove-noops")


NOT_NOOPS = {
    "cast-to-other-type": ([node("Cast", ["r"], ["c"], to=TensorProto.DOUBLE), node("Cast", ["c"], ["t"], to=TensorProto.FLOAT)], [], [3, 4]),
    "partial-slice": ([node("Slice", ["r", "st", "en", "axes"], ["t"])], [init("st", np.array([1], np.int64)), init("en", np.array([9], np.int64)), init("axes", np.array([1], np.int64))], [3, 3]),
    "growing-expand": ([node("Expand", ["r", "shape"], ["t"])], [init("shape", np.array([2, 1, 1], np.int64))], [2, 3, 4]),
    "mul-ones-that-broadcast": ([node("Mul", ["r", "one"], ["t"])], [init("one", np.ones((2, 1, 1), np.float32))], [2, 3, 4]),
    "add-non-zero": ([node("Add", ["r", "c"], ["t"])], [init("c", np.full(4, 1e-3, np.float32))], [3, 4]),
    "zero-minus-x": ([node("Sub", ["zero", "r"], ["t"])], [init("zero", np.float32(0))], [3, 4]),
}


@pytest.mark.parametrize("case", sorted(NOT_NOOPS))
def test_not_a_noop_stays(case):
    nodes, inits, out_shape = NOT_NOOPS[case]
    untouched(relu_after(nodes, [3, 4], out_shape, inits), pass_name="remove-noops")


def test_noop_between_graph_input_and_output_stays():
    model = make_model([node("Mul", ["x", "one"], ["y"])], [tensor("x", [2])], [tensor("y", [2])], [init("one", np.float32(1))])
    untouched(model, pass_name="remove-noops")


def test_div_by_constant_becomes_mul_and_constant_chains_merge():
    nodes = [node("Div", ["r", "d"], ["a"]), node("Mul", ["a", "m"], ["b"]), node("Add", ["b", "c1"], ["c"]), node("Add", ["c2", "c"], ["t"])]
    inits = [init("d", np.float32(3.0)), init("m", floats(4, 1)), init("c1", floats((1, 4), 2)), init("c2", np.float32(0.5))]
    fused(relu_after(nodes, [3, 4], [3, 4], inits), ["Relu", "Mul", "Add", "Relu"], pass_name="simplify-arithmetic")


def test_div_by_a_tensor_or_by_zero_stays():
    nodes = [node("Div", ["r", "d"], ["a"]), node("Div", ["a", "z"], ["t"])]
    model = make_model([node("Relu", ["x"], ["r"])] + nodes, [tensor("x", [3, 4]), tensor("d", [3, 4])], [tensor("t", [3, 4])], [init("z", np.array([1, 0, 1, 1], np.float32))])
    untouched(model, pass_name="simplify-arithmetic")


def test_cse_merges_repeated_shape_arithmetic():
    nodes = [
        node("Shape", ["x"], ["s1"]), node("Shape", ["x"], ["s2"]),
        node("Gather", ["s1", "i1"], ["g1"], axis=0), node("Gather", ["s2", "i2"], ["g2"], axis=0),
        node("Add", ["g1", "g2"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", ["N", 3])], [tensor("y", [])], [init("i1", np.array(0, np.int64)), init("i2", np.array(0, np.int64))], opset=17)
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    out, result = fused(model, ["Shape", "Gather", "Add"], pass_name="cse", shapes={"x": (5, 3)})
    assert result.stats["merged"] == 2


def test_cse_keeps_random_ops_and_distinct_attributes():
    nodes = [
        node("RandomUniformLike", ["x"], ["r1"], seed=1.0), node("RandomUniformLike", ["x"], ["r2"], seed=1.0),
        node("Softmax", ["x"], ["s1"], axis=0), node("Softmax", ["x"], ["s2"], axis=1),
        node("Sum", ["r1", "r2", "s1", "s2"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])])
    out, result = fuse(model, "cse")
    assert ops(out) == ops(model) and not result.changed


def test_cse_keeps_two_graph_outputs_apart():
    nodes = [node("Relu", ["x"], ["a"]), node("Relu", ["x"], ["b"])]
    model = make_model(nodes, [tensor("x", [2])], [tensor("a", [2]), tensor("b", [2])])
    out, result = fuse(model, "cse")
    assert ops(out) == ["Relu", "Relu"] and not result.changed
    assert_same_outputs(model, out)
