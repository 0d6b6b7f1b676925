"""Common-subexpression elimination: nodes computing the same op on the same inputs become one.

Exporters repeat shape arithmetic (Shape -> Gather -> Unsqueeze per layer) and sometimes whole
branches. Two nodes are the same computation when op, domain, attributes and inputs match; small
constants match by value, so two `Unsqueeze(x, [0])` with separate `[0]` tensors merge too. Random
ops and nodes carrying subgraphs are never merged, and a graph output keeps its name.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import has_subgraph, iter_graphs, merge_tensors, node_count
from onnxopt.ops import NONDETERMINISTIC
from onnxopt.passes.fusion.rules import remove
from onnxopt.pipeline import Pass, PassContext, PassResult, register_pass

VALUE_KEY_LIMIT = 4096  # constants up to this many elements are compared by value


def _array_key(values: np.ndarray) -> tuple:
    return ("array", values.dtype.str, values.shape, hashlib.blake2b(values.tobytes(), digest_size=16).digest())


def _attr_key(value: Any) -> Any:
    if isinstance(value, gs.Constant):
        return _array_key(np.asarray(value.values))
    if isinstance(value, np.ndarray):
        return _array_key(value)
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, (gs.Tensor, gs.Graph)):
        return ("object", id(value))
    return value


class _Keys:
    def __init__(self):
        self.const_keys: dict[int, Any] = {}

    def tensor(self, tensor: gs.Tensor) -> Any:
        if not tensor.name:
            return ("absent",)
        if isinstance(tensor, gs.Constant):
            key = self.const_keys.get(id(tensor))
            if key is None:
                # Size from the shape first: `.values` loads a lazily imported weight and keeps it.
                small = int(np.prod(tensor.shape, dtype=np.int64)) <= VALUE_KEY_LIMIT
                key = _array_key(np.asarray(tensor.values)) if small else ("tensor", id(tensor))
                self.const_keys[id(tensor)] = key
            return key
        return ("tensor", id(tensor))

    def node(self, node: gs.Node) -> Any:
        attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
        return (node.op, node.domain or "", attrs, tuple(self.tensor(t) for t in node.inputs), len(node.outputs))


def eliminate_common_subexpressions(graph: gs.Graph) -> int:
    """Merge duplicate nodes in `graph` (not its subgraphs); returns how many went."""
    keys = _Keys()
    seen: dict[Any, gs.Node] = {}
    merged = 0
    graph.toposort(recurse_subgraphs=False)
    for node in list(graph.nodes):
        if node.op in NONDETERMINISTIC or has_subgraph(node) or not node.outputs or not all(t.name for t in node.outputs):
            continue
        try:
            key = keys.node(node)
            hash(key)
        except TypeError:
            continue
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        if not all(_mergeable(graph, keep, drop) for keep, drop in zip(first.outputs, node.outputs)):
            continue
        drops = list(node.outputs)
        remove(node)
        for keep, drop in zip(first.outputs, drops):
            merge_tensors(graph, keep, drop)
        merged += 1
    if merged:
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=False).toposort(recurse_subgraphs=False)
    return merged


def _mergeable(graph: gs.Graph, keep: gs.Tensor, drop: gs.Tensor) -> bool:
    is_out = lambda t: any(o is t for o in graph.outputs)  # noqa: E731
    return not is_out(drop) or not is_out(keep)


@register_pass
class CommonSubexpressionElimination(Pass):
    """Merge nodes that compute the same op on the same inputs with the same attributes."""

    name = "cse"
    exact = True
    description = "common-subexpression elimination (small constants compared by value)"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = node_count(graph)
        merged = sum(eliminate_common_subexpressions(sub) for sub in list(iter_graphs(graph)))
        return PassResult(changed=merged > 0 or node_count(graph) != before, stats={"merged": merged})
