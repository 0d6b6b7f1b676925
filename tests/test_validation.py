"""Model validation: graph structure, tensor sizes and payloads, the weightless copy, channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt.errors import ModelInvalidError
from onnxopt.validation import (
    SKELETON_BYTES,
    check_structure,
    check_weight_payloads,
    iter_tensors,
    left_out_tensors,
    nonfinite_tensors,
    tensor_nbytes,
    validate_shapes,
    weightless_copy,
)
from tests.conftest import init, make_model, tensor


def _graph(nodes, inputs=("x",), outputs=("y",)):
    return helper.make_graph(nodes, "g", [tensor(n, [2]) for n in inputs], [tensor(n, [2]) for n in outputs])


def test_check_structure_accepts_a_sorted_graph():
    check_structure(_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])]))


@pytest.mark.parametrize(
    "nodes, message",
    [
        ([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])], "produced by both"),
        ([helper.make_node("Relu", ["x"], ["x"])], "both a graph input or initializer and the output"),
        ([helper.make_node("Add", ["x", "ghost"], ["y"])], "reads tensor 'ghost', which no node"),
        ([helper.make_node("Neg", ["a"], ["y"]), helper.make_node("Relu", ["x"], ["a"])], "order"),
        ([helper.make_node("Relu", ["x"], ["a"])], "graph output 'y' of the graph is not produced"),
    ],
)
def test_check_structure_names_what_is_wrong(nodes, message):
    with pytest.raises(ModelInvalidError, match=message):
        check_structure(_graph(nodes))


def test_tensor_sizes_and_the_weightless_copy():
    small = init("small", np.zeros(4, np.float32))
    big = init("big", np.ones((SKELETON_BYTES // 4 + 1,), np.float32))
    assert tensor_nbytes(small) == 16 and tensor_nbytes(big) == SKELETON_BYTES + 4
    nodes = [helper.make_node("Mul", ["x", "small"], ["a"]), helper.make_node("ReduceSum", ["big"], ["s"]),
             helper.make_node("Add", ["a", "s"], ["y"])]
    model = make_model(nodes, [tensor("x", [4])], [tensor("y", [4])], [small, big])
    copy = weightless_copy(model)
    assert [i.name for i in copy.graph.initializer] == ["small"]
    assert [i.name for i in copy.graph.input] == ["x", "big"]
    assert [dim.dim_value for dim in copy.graph.input[1].type.tensor_type.shape.dim] == [SKELETON_BYTES // 4 + 1]
    assert [(what, t.name) for what, t in left_out_tensors(model)] == [("initializer 'big'", "big")]
    assert len(model.graph.initializer) == 2  # the original is untouched


def test_corrupt_payload_is_refused():
    big = init("big", np.ones((SKELETON_BYTES,), np.float32))
    model = make_model([helper.make_node("Add", ["x", "big"], ["y"])], [tensor("x", [SKELETON_BYTES])],
                       [tensor("y", [SKELETON_BYTES])], [big])
    check_weight_payloads(model)
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    with pytest.raises(ModelInvalidError, match=f"holds {4 * SKELETON_BYTES - 4} bytes of data but its shape"):
        check_weight_payloads(model)


def test_conv_weight_must_fit_the_input_channels():
    weight = init("w", np.ones((4, 2, 3, 3), np.float32))  # 2 input channels; the checker cannot see it
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [tensor("x", [1, 3, 8, 8])],
                              [tensor("y", [1, 4, 6, 6])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelInvalidError, match="for an input with 3 channels"):
        validate_shapes(model)


def test_iter_tensors_reaches_subgraphs_and_nonfinite_values_are_named():
    infinite = helper.make_node("Constant", [], ["t"], value=init("inner", np.array([np.inf], np.float32)))
    inner = helper.make_graph([infinite], "then", [], [tensor("t", [1])])
    outer = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner)], "g",
        [tensor("c", [], TensorProto.BOOL)], [tensor("y", [1])],
        [init("nan", np.array([1.0, np.nan], np.float32)), init("ok", np.array([1.0], np.float32))],
    )
    model = helper.make_model(outer, opset_imports=[helper.make_opsetid("", 17)])
    assert [t.name for t in iter_tensors(model.graph)] == ["nan", "ok", "inner", "inner"]
    assert nonfinite_tensors(model) == ["nan", "inner", "inner"]
    onnx.checker.check_model(model)
