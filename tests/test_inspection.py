"""model_summary: parameters and MACs with concrete shapes, also where onnx's inference stops."""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxopt.inspection import dim_value, model_summary
from tests.conftest import init, tensor


def test_dim_expressions_from_symbolic_inference_evaluate_over_input_symbols():
    symbols = {"p2o.DynamicDimension.1": 320, "?": 48, "batch": 2}
    assert dim_value("batch", symbols) == 2
    assert dim_value("floor(floor(floor(p2o.DynamicDimension.1/2 - 1/2)/2)/2 - 1/2) + 1", symbols) == 40
    assert dim_value("(floor(?/2 - 1/2) + 1)*batch", symbols) == 48
    assert dim_value("2*batch - 1", symbols) == 3
    # names that are not input symbols, or text that is not arithmetic, stay symbolic
    assert dim_value("batch_size", symbols) == "batch_size"
    assert dim_value("unk__3", symbols) == "unk__3"
    assert dim_value("__import__('os')", symbols) == "__import__('os')"
    assert dim_value("batch/4", symbols) == "batch/4"  # not a whole number


def test_macs_counted_where_only_the_models_own_symbolic_annotations_know_the_shape():
    """A contrib op onnx cannot infer hides the MatMul's input shape from onnx; the model's value_info
    (as ORT's symbolic inference writes it) still gives it, with the input symbols replaced."""
    w = np.ones((8, 16), np.float32)
    nodes = [
        helper.make_node("FastGelu", ["x"], ["g"], domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [tensor("x", ["batch", "seq", 8])], [tensor("y", ["batch", "seq", 16])], [init("w", w)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.graph.value_info.append(tensor("g", ["batch", "seq", 8]))
    summary = model_summary(model, input_shapes={"x": (2, 5, 8)})
    assert summary["macs_by_op"] == {"MatMul": 2 * 5 * 8 * 16}
    assert summary["parameters"] == 8 * 16
    assert summary["cost_shapes"] == {"x": [2, 5, 8]}
