"""Run a model and a rewritten copy side by side at every batch size the generator allows."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.evaluation import output_difference, outputs_match
from onnxopt.inputs import input_specs, random_feeds
from onnxopt.runtime import run_model
from tests.fuzz.generator import BATCH_VALUES

RTOL, ATOL = 1e-4, 1e-5  # the ort-fp32 recipe's verification tolerance


def input_shapes(model: onnx.ModelProto, batch: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(batch if d.dim_param == "N" else d.dim_value for d in dims)
    return shapes


def reference_outputs(model: onnx.ModelProto, batched: bool) -> dict:
    """{batch: (feeds, outputs)} for N=1 and N=3 when the model is batched, one fixed shape otherwise."""
    refs = {}
    for batch in BATCH_VALUES if batched else (None,):
        shapes = input_shapes(model, batch) if batch else {}
        feeds = random_feeds(input_specs(model, shapes), seed=7)
        refs[batch] = (feeds, run_model(model, feeds))
    return refs


def assert_equivalent(refs: dict, candidate: onnx.ModelProto, label: str) -> None:
    onnx.checker.check_model(candidate)
    for batch, (feeds, expected) in refs.items():
        actual = run_model(candidate, feeds)
        where = f"{label} (N={batch})" if batch else label
        assert list(actual) == list(expected), f"{where}: outputs {list(actual)} != {list(expected)}"
        for name in expected:
            assert actual[name].dtype == expected[name].dtype, f"{where}: {name} dtype {actual[name].dtype} != {expected[name].dtype}"
            assert actual[name].shape == expected[name].shape, f"{where}: {name} shape {actual[name].shape} != {expected[name].shape}"
        ok, why = outputs_match(output_difference(expected, actual), RTOL, ATOL)
        assert ok, f"{where}: {why}"
