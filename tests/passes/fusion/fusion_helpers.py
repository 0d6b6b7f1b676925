"""Shared helpers for the fusion tests: run a pass on a tiny model, compare with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxopt.graphs import export_model, import_graph
from onnxopt.pipeline import PassContext, get_pass
from tests.conftest import assert_same_outputs, init, make_model, ops, tensor  # noqa: F401 (re-exported)


def fuse(model: onnx.ModelProto, pass_name: str = "fusion", target: str = "ort-fp32", infer: bool = True, **options):
    """Run shape inference (as the recipe does) and one pass; return the checked model and result."""
    graph = import_graph(model)
    ctx = PassContext(target=target)
    if infer:
        get_pass("shape-inference")(symbolic=False).run(graph, ctx)
    result = get_pass(pass_name)(**options).run(graph, ctx)
    out = export_model(graph, model)
    onnx.checker.check_model(out)
    return out, result


def fused(model, expected_ops, pass_name="fusion", target="ort-fp32", seeds=(0, 1), shapes=None, **options):
    """Assert the pass leaves exactly `expected_ops` (in order) and the outputs are unchanged."""
    out, result = fuse(model, pass_name, target, **options)
    assert ops(out) == list(expected_ops), ops(out)
    assert result.changed
    for seed in seeds:
        assert_same_outputs(model, out, seed=seed, shapes=shapes)
    return out, result


def untouched(model, pass_name="fusion", target="ort-fp32", **options):
    """Assert the pass changes nothing in the node list and still runs the same."""
    out, result = fuse(model, pass_name, target, **options)
    assert ops(out) == ops(model), ops(out)
    assert_same_outputs(model, out)
    return out, result


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def rng(seed=0):
    return np.random.default_rng(seed)


def floats(shape, seed=0, low=None):
    values = rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(values) + low if low is not None else values


def domains(model) -> dict[str, int]:
    return {o.domain: o.version for o in model.opset_import}
