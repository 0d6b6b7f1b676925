"""Input shapes from the command line and from the model, and the seeded feeds built from them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxopt.errors import ConfigError
from onnxopt.inputs import InputSpec, input_specs, parse_input_shapes, parse_shape_ranges, random_feeds
from tests.conftest import init, make_model, tensor


def test_parse_shapes_and_ranges():
    assert parse_input_shapes(["x=1x3x224x224", "ids = 2X7"]) == {"x": (1, 3, 224, 224), "ids": (2, 7)}
    assert parse_input_shapes(["x=1x3:4x3:8x3"]) == {"x": (4, 3)}  # a range keeps its opt shape
    assert parse_shape_ranges(["x=1x3:4x3:8x3", "y=2"]) == {"x": ((1, 3), (4, 3), (8, 3)), "y": ((2,), (2,), (2,))}


@pytest.mark.parametrize(
    "parse, item, message",
    [
        (parse_input_shapes, "x", "write name=1x3x224x224"),
        (parse_input_shapes, "x=1x0", "every dim must be a positive integer"),
        (parse_input_shapes, "x=1xN", "bad shape"),
        (parse_shape_ranges, "x=4:2:8", "min <= opt <= max"),
        (parse_shape_ranges, "x=1x2:1x2x3:1x2", "same rank"),
    ],
)
def test_bad_shapes_say_what_to_write(parse, item, message):
    with pytest.raises(ConfigError, match=message):
        parse([item])


def _model():
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("Mul", ["e", "mask"], ["y"])]
    inputs = [tensor("ids", ["batch", "seq"], TensorProto.INT64), tensor("mask", ["batch", "seq", 4])]
    # an old exporter lists the weight among the inputs too; it is not a real input
    inputs.append(tensor("emb", [10, 4]))
    return make_model(nodes, inputs, [tensor("y", ["batch", "seq", 4])], [init("emb", np.ones((10, 4), np.float32))])


def test_dynamic_dims_get_defaults_shared_by_symbol_and_a_warning():
    warnings = []
    specs = input_specs(_model(), warnings=warnings)
    assert specs == [InputSpec("ids", np.dtype(np.int64), (1, 32)), InputSpec("mask", np.dtype(np.float32), (1, 32, 4))]
    assert warnings == [
        "input ids has dynamic dims; using 1x32 (set --input-shape ids=...)",
        "input mask has dynamic dims; using 1x32x4 (set --input-shape mask=...)",
    ]


def test_a_given_shape_fixes_its_symbols_for_the_other_inputs():
    specs = input_specs(_model(), {"ids": (2, 5)})
    assert [s.shape for s in specs] == [(2, 5), (2, 5, 4)]
    with pytest.raises(ConfigError, match="dim fixed at 4 in the model, got 3"):
        input_specs(_model(), {"mask": (2, 5, 3)})
    with pytest.raises(ConfigError, match="unknown input"):
        input_specs(_model(), {"emb": (10, 4)})


def test_random_feeds_are_seeded_and_valid_as_indices():
    specs = [InputSpec("x", np.dtype(np.float32), (3, 4)), InputSpec("i", np.dtype(np.int64), (50,)),
             InputSpec("b", np.dtype(bool), (2,))]
    a, b = random_feeds(specs, seed=3), random_feeds(specs, seed=3)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert a["x"].dtype == np.float32 and a["x"].shape == (3, 4) and 0.2 < a["x"].std() < 3
    assert set(np.unique(a["i"])) == {0, 1} and a["b"].dtype == bool
    assert not np.array_equal(random_feeds(specs, seed=4)["x"], a["x"])
