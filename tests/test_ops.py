"""The op-family table: families are consistent with each other and with ONNX, and rules read them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxopt import ops
from onnxopt.graphs import rank_of

FAMILIES = {name: value for name, value in vars(ops).items() if name.isupper() and isinstance(value, frozenset)}


def test_every_family_names_real_onnx_ops():
    known = {schema.name for schema in onnx.defs.get_all_schemas_with_history() if schema.domain == ""}
    unknown = {name: sorted(family - known) for name, family in FAMILIES.items() if family - known}
    assert not unknown


def test_derived_families():
    assert ops.BROADCASTING >= ops.ELEMENTWISE | ops.COMPARISON | ops.LOGICAL
    assert not ops.ELEMENTWISE & ops.COMPARISON  # booleans do not carry channels
    assert ops.ACCUMULATING_REDUCE == ops.REDUCE - {"ReduceMax", "ReduceMin"}
    assert ops.REFITTABLE == {"Conv", "Gemm", "MatMul"}
    assert ops.MAC >= ops.LINEAR and ops.QUANT_TRANSPARENT >= ops.RESHAPE_LIKE
    assert ops.NONDETERMINISTIC <= ops.TYPE_FROM_ATTRIBUTE and ops.QDQ <= ops.TYPE_FROM_ATTRIBUTE


def test_rules_read_the_table():
    """The passes' own names for families are the table's sets, not copies that could drift."""
    from onnxopt.passes.prune import groups
    from onnxopt.passes.quantize import placement

    assert groups.UNARY_OPS is ops.UNARY and groups.ELEMENTWISE_OPS is ops.ELEMENTWISE
    assert groups.POOL_OPS is ops.POOL and groups.REDUCE_OPS is ops.REDUCE
    assert set(placement.WEIGHTED_OPS) == ops.LINEAR and set(placement.ORT_PASSTHROUGH) == ops.QUANT_TRANSPARENT


def _chain(op: str, input_shapes: list[list[int]], **attrs) -> gs.Tensor:
    """The output of one `op` node whose inputs have the given shapes and whose output shape is unknown."""
    inputs = [gs.Variable(f"x{i}", np.float32, shape) for i, shape in enumerate(input_shapes)]
    out = gs.Variable("y", np.float32, None)
    gs.Node(op, attrs=attrs, inputs=inputs, outputs=[out])
    return out


@pytest.mark.parametrize(
    "op, shapes, rank",
    [
        ("Relu", [[2, 3, 4]], 3),
        ("Softmax", [[2, 3]], 2),
        ("Add", [[3, 4], [2, 1, 4]], 3),
        ("Equal", [[5], [2, 5]], 2),  # every broadcasting op, comparisons too
        ("MatMul", [[2, 3, 4], [4, 5]], 3),
        ("MatMul", [[3, 4], [4]], 1),  # a 1-D operand's dim is contracted away
        ("MatMul", [[4], [4]], 0),
        ("Shape", [[2, 3]], None),  # not a rank-preserving family
    ],
)
def test_rank_of_follows_the_families(op, shapes, rank):
    assert rank_of(_chain(op, shapes)) == rank
