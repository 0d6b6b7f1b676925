"""Exact equalities between symbolic dims that onnx's shape inference misses.

onnx names every dim it cannot compute with a fresh symbol ('unk__7'), so after a Reshape to
[0, -1, 120] or an Add of two such tensors, dims that must be equal carry different names, and
fusions that need "same shape" (SkipLayerNormalization) or "same dim" (Reshape targets built from
Shape ops) give up. Two rules recover what follows from the model alone, with no guess:

- Reshape: the element count is preserved, so the -1 dim is the input's product divided by the
  other output dims; when that leaves one input symbol, the -1 dim is that symbol.
- Elementwise ops: where every input has the same symbol at a position (no broadcasting there),
  the output has it too.

ORT's symbolic engine knows more (it also assumes broadcast dims are equal), but costs a sympy
run; this runs in microseconds per node and lets the engine be skipped where it is not needed.
The one exception to exactness is a zero-sized dim, where -1 is undefined in the first place.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.graphs import tensor_dims
from onnxopt.ops import BROADCASTING


def unify_dim_symbols(model: onnx.ModelProto) -> int:
    """Rename symbolic dims in `model`'s value_info (in place) where the rules above prove two
    symbols equal; returns how many dims were renamed."""
    graph = model.graph
    infos = {vi.name: vi for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
    constants = {t.name: t for t in graph.initializer}
    alias: dict[str, str] = {}

    def find(symbol):
        while isinstance(symbol, str) and symbol in alias:
            symbol = alias[symbol]
        return symbol

    def dims_of(name):
        vi = infos.get(name)
        dims = tensor_dims(vi.type) if vi is not None else None
        return None if dims is None else [find(d) for d in dims]

    named = {d for vi in graph.input for d in (tensor_dims(vi.type) or ()) if isinstance(d, str)}
    rank = lambda symbol: 0 if symbol in named else 2 if symbol.startswith("unk__") else 1  # noqa: E731

    def merge(a, b):
        """Make two symbols one, named after the more meaningful (a model input's 'batch' over 'unk__3')."""
        a, b = find(a), find(b)
        if isinstance(a, str) and isinstance(b, str) and a != b:
            keep, drop = sorted((a, b), key=lambda s: (rank(s), s))
            alias[drop] = keep

    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or not node.output or not node.output[0]:
            continue
        out = dims_of(node.output[0])
        if out is None:
            continue
        if node.op_type == "Reshape" and len(node.input) == 2 and node.input[1] in constants:
            position, symbol = _reshape_free_dim(dims_of(node.input[0]), out, numpy_helper.to_array(constants[node.input[1]]))
            if symbol is not None:
                merge(out[position], symbol)
        elif node.op_type in BROADCASTING:
            inputs = [dims_of(name) for name in node.input if name]
            if any(d is None or len(d) != len(out) for d in inputs):
                continue
            for k, dim in enumerate(out):
                column = {d[k] for d in inputs}
                if len(column) == 1 and isinstance(dim, str):
                    merge(dim, column.pop())
    renamed = 0
    for vi in infos.values():
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and find(d.dim_param) != d.dim_param:
                d.dim_param = find(d.dim_param)
                renamed += 1
    return renamed


def _reshape_free_dim(before: list | None, after: list, target: np.ndarray) -> tuple[int, str | None]:
    """The -1 position of a Reshape target and the input symbol it must equal, or (_, None)."""
    target = target.reshape(-1).tolist()
    if before is None or target.count(-1) != 1 or len(target) != len(after) or None in before:
        return -1, None
    position = target.index(-1)
    rest = [d for i, d in enumerate(after) if i != position]
    if None in rest:
        return position, None
    symbols = Counter(d for d in before if isinstance(d, str))
    symbols.subtract(d for d in rest if isinstance(d, str))
    if any(count < 0 for count in symbols.values()):
        return position, None
    left = [s for s, count in symbols.items() for _ in range(count)]
    numbers_in = int(np.prod([d for d in before if isinstance(d, int)], dtype=np.int64))
    numbers_out = int(np.prod([d for d in rest if isinstance(d, int)], dtype=np.int64))
    if len(left) != 1 or numbers_out == 0 or numbers_in != numbers_out:
        return position, None
    return position, left[0]
