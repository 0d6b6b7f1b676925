"""Seeded feeds for sequence and optional inputs (ONNX's node tests have models taking them)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxopt.errors import ModelInvalidError
from onnxopt.inputs import SEQUENCE_LENGTH, input_specs, random_feeds
from onnxopt.runtime import run_model


def _model(input_type, nodes, output):
    graph = helper.make_graph(nodes, "g", [helper.make_value_info("x", input_type)], [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_sequence_input_gets_a_list_of_seeded_tensors_onnxruntime_accepts():
    seq = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2, 3]))
    model = _model(seq, [helper.make_node("ConcatFromSequence", ["x"], ["y"], axis=0)], helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3]))
    (spec,) = input_specs(model)
    assert (spec.kind, spec.shape) == ("sequence", (2, 3))
    feeds = random_feeds([spec], seed=0)
    assert len(feeds["x"]) == SEQUENCE_LENGTH and all(t.shape == (2, 3) for t in feeds["x"])
    assert run_model(model, feeds)["y"].shape == (2 * SEQUENCE_LENGTH, 3)


def test_an_optional_input_is_fed_present_and_tensor_feeds_stay_as_before():
    opt = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [4]))
    model = _model(opt, [helper.make_node("OptionalGetElement", ["x"], ["y"])], helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]))
    (spec,) = input_specs(model)
    assert (spec.kind, spec.shape) == ("tensor", (4,))
    feeds = random_feeds([spec], seed=0)
    np.testing.assert_array_equal(run_model(model, feeds)["y"], feeds["x"])
    np.testing.assert_array_equal(feeds["x"], np.random.default_rng(0).standard_normal((4,)).astype(np.float32))


def test_a_map_input_is_refused_with_its_name():
    map_type = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    model = _model(map_type, [helper.make_node("Identity", ["x"], ["y"])], helper.make_value_info("y", map_type))
    with pytest.raises(ModelInvalidError, match="input 'x' is not a tensor, a sequence of tensors or an optional one"):
        input_specs(model)
