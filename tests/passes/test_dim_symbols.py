"""Dim-symbol unification after onnx's shape inference: exact equalities onnx leaves unnamed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import onnxopt
from onnxopt.passes.dim_symbols import unify_dim_symbols
from tests.conftest import assert_same_outputs, init, make_model, ops, tensor


def _dims(model, name):
    vi = next(v for v in list(model.graph.value_info) + list(model.graph.output) if v.name == name)
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _residual_block(skip_shape=("batch", "seq", 120)):
    """heads [batch, seq, 8, 15] reshaped to [batch, -1, 120], plus a residual, then LayerNorm."""
    nodes = [
        helper.make_node("Reshape", ["heads", "merge"], ["merged"]),
        helper.make_node("Add", ["merged", "skip"], ["sum"]),
        helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1),
    ]
    weights = [
        init("merge", np.array([0, -1, 120], np.int64)),
        init("gamma", np.linspace(0.5, 1.5, 120).astype(np.float32)),
        init("beta", np.linspace(-0.1, 0.1, 120).astype(np.float32)),
    ]
    inputs = [tensor("heads", ["batch", "seq", 8, 15]), tensor("skip", list(skip_shape))]
    return make_model(nodes, inputs, [tensor("y", ["batch", "seq", 120])], weights)


def test_reshape_free_dim_and_elementwise_output_take_the_input_symbol():
    inferred = onnx.shape_inference.infer_shapes(_residual_block(("batch", "other", 120)), data_prop=True)
    assert isinstance(_dims(inferred, "merged")[1], str) and _dims(inferred, "merged")[1] != "seq"  # onnx's fresh name
    assert unify_dim_symbols(inferred) > 0
    assert _dims(inferred, "merged") == ["batch", "seq", 120]
    # 'seq' and 'other' are different inputs' dims: broadcasting might make either 1, so no merge
    assert _dims(inferred, "sum")[1] not in ("seq", "other")


def test_no_rename_when_the_element_count_leaves_more_than_one_symbol():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    model = make_model(nodes, [tensor("x", ["a", "b", 4])], [tensor("y", [None, None])], [init("shape", np.array([4, -1], np.int64))])
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    before = _dims(inferred, "y")
    assert unify_dim_symbols(inferred) == 0 and _dims(inferred, "y") == before


def test_unified_dims_let_skip_layernorm_fuse_with_outputs_unchanged(skip_layernorm_faster):
    model = _residual_block()
    fused = onnxopt.compile(model, profile=False).model
    assert "SkipLayerNormalization" in ops(fused) and "Add" not in ops(fused)
    assert_same_outputs(model, fused, shapes={"heads": (2, 5, 8, 15), "skip": (2, 5, 120)})
    plain = onnxopt.compile(model, profile=False, overrides=["shape-inference.unify_dims=false"]).model
    assert "SkipLayerNormalization" not in ops(plain), "without unification onnx cannot prove the Add's inputs alike"
