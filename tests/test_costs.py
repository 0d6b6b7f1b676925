"""The static cost model: MACs per node from shapes, parameters, op histograms, concrete shapes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from onnxopt.costs import concrete_costs, graph_costs, node_macs, op_histogram
from onnxopt.graphs import import_graph
from tests.conftest import init, make_model, tensor


def _node(op: str, shapes: list[list[int] | None], out_shape: list[int] | None, **attrs) -> gs.Node:
    inputs = [gs.Variable(f"in{i}", np.float32, s) for i, s in enumerate(shapes)]
    return gs.Node(op, attrs=attrs, inputs=inputs, outputs=[gs.Variable("out", np.float32, out_shape)])


@pytest.mark.parametrize(
    "op, shapes, out, attrs, macs",
    [
        # every output element sums over C_in/group x kh x kw products
        ("Conv", [[1, 3, 8, 8], [4, 3, 3, 3]], [1, 4, 8, 8], {}, 4 * 8 * 8 * 3 * 3 * 3),
        ("Conv", [[1, 4, 8, 8], [4, 1, 3, 3]], [1, 4, 8, 8], {"group": 4}, 4 * 8 * 8 * 9),  # depthwise
        # every input element is scattered into C_out/group x kh x kw outputs
        ("ConvTranspose", [[1, 3, 4, 4], [3, 2, 2, 2]], [1, 2, 8, 8], {}, 3 * 4 * 4 * 2 * 2 * 2),
        ("MatMul", [[2, 5, 6], [6, 7]], [2, 5, 7], {}, 2 * 5 * 7 * 6),
        ("Gemm", [[5, 6], [7, 6]], [5, 7], {"transB": 1}, 5 * 7 * 6),
        ("Gemm", [[6, 5], [6, 7]], [5, 7], {"transA": 1}, 5 * 7 * 6),
        ("Relu", [[1, 3, 8, 8]], [1, 3, 8, 8], {}, 0),  # not a MAC op
    ],
)
def test_node_macs(op, shapes, out, attrs, macs):
    assert node_macs(_node(op, shapes, out, **attrs)) == macs


def test_unknown_shapes_give_none_not_zero():
    assert node_macs(_node("Conv", [[1, 3, 8, 8], [4, 3, 3, 3]], ["N", 4, 8, 8])) is None
    assert node_macs(_node("MatMul", [None, [6, 7]], [5, 7])) is None


def _mlp_with_constant_node_weight():
    w1 = np.ones((6, 4), np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w2"], value=init("w2v", np.ones((4, 3), np.float32))),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    return make_model(nodes, [tensor("x", ["N", 6])], [tensor("y", ["N", 3])], [init("w1", w1)])


def test_graph_costs_counts_parameters_in_initializers_and_constant_nodes():
    graph = import_graph(_mlp_with_constant_node_weight())
    costs = graph_costs(graph)
    assert costs["parameters"] == 6 * 4 + 4 * 3
    # the batch dim is symbolic: both MatMuls' MACs are unknown, the Relu and Constant cost nothing
    assert costs["macs"] == 0 and costs["nodes_with_unknown_shape"] == 2


def test_concrete_costs_fill_dynamic_dims_and_leave_the_graph_alone():
    graph = import_graph(_mlp_with_constant_node_weight())
    shapes_before = {name: t.shape for name, t in graph.tensors().items()}
    costs, per_node = concrete_costs(graph, {"x": (5, 6)})
    assert costs["macs_by_op"] == {"MatMul": 5 * 4 * 6 + 5 * 3 * 4}
    assert costs["nodes_with_unknown_shape"] == 0
    assert sorted(per_node.values()) == [0, 0, 5 * 3 * 4, 5 * 4 * 6]
    assert {name: t.shape for name, t in graph.tensors().items()} == shapes_before
    default, _ = concrete_costs(graph)  # a dynamic dim takes 1 where no shape is given
    assert default["macs"] == 4 * 6 + 3 * 4


def test_op_histogram_counts_nested_graphs_and_names_domains():
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [tensor("t", [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [tensor("e", [2])])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("If", ["c"], ["b"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Gelu", ["a"], ["g"], domain="com.microsoft"),
    ]
    graph = helper.make_graph(nodes, "m", [tensor("x", [2]), tensor("c", [], 9)], [tensor("b", [2]), tensor("g", [2])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    assert op_histogram(model) == {"Relu": 2, "If": 1, "Neg": 1, "com.microsoft.Gelu": 1}
