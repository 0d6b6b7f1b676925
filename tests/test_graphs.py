"""Exporting gs graphs: full models keep the source model intact; skeletons drop large weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxopt.graphs import export_model, export_skeleton, import_graph
from onnxopt.runtime import run_model
from tests.conftest import init, make_model, tensor


def _model():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["y"]),
    ]
    weights = [init("w", rng.standard_normal((64, 32)).astype(np.float32)), init("shape", np.array([0, 4, 8], np.int64))]
    model = make_model(nodes, [tensor("x", ["n", 64])], [tensor("y", ["n", 4, 8])], weights)
    model.metadata_props.add(key="origin", value="test")
    return model


def test_export_renames_a_weight_without_touching_the_source_model():
    model = _model()
    source = onnx.ModelProto()
    source.CopyFrom(model)
    graph = import_graph(model)
    weight = graph.tensors()["w"]
    weight.name = "w_renamed"
    exported = export_model(graph, model)
    assert model == source, "the source model's TensorProto was renamed in place"
    assert {t.name for t in exported.graph.initializer} == {"w_renamed", "shape"}
    assert [p.key for p in exported.metadata_props] == ["origin"]
    feeds = {"x": np.ones((3, 64), np.float32)}
    np.testing.assert_array_equal(run_model(exported, feeds)["y"], run_model(model, feeds)["y"])


def test_skeleton_turns_large_weights_into_typed_inputs_and_infers_the_same_shapes():
    model = _model()
    skeleton = export_skeleton(import_graph(model), max_weight_bytes=1024)
    assert [t.name for t in skeleton.graph.initializer] == ["shape"]
    stand_in = next(i for i in skeleton.graph.input if i.name == "w")
    assert [d.dim_value for d in stand_in.type.tensor_type.shape.dim] == [64, 32]
    inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    out = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["n", 4, 8]
