"""Static cost model: parameters, MACs per node and per op type, from inferred shapes.

MACs (multiply-accumulates) are counted for Conv, ConvTranspose, Gemm and MatMul (and their
integer forms), the ops that dominate CNN and transformer cost; other ops are not counted.
Pruning and depthwise substitution budget against these numbers, `inspect` prints them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graphs import export_model, iter_graphs
from onnxopt.inputs import input_specs
from onnxopt.ops import MAC
from onnxopt.pipeline import PassContext, get_pass  # shape inference is a pass, found through the registry


def _shape(tensor: gs.Tensor) -> list[int] | None:
    shape = tensor.shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return [int(d) for d in shape]


def node_macs(node: gs.Node) -> int | None:
    """MACs of one node, or None when shapes are unknown."""
    op = node.op
    if op not in MAC:
        return 0
    out = _shape(node.outputs[0]) if node.outputs else None
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w_index = 3 if op == "QLinearConv" else 1
        if len(node.inputs) <= w_index:
            return None
        w = _shape(node.inputs[w_index])
        if out is None or w is None:
            return None
        return int(np.prod(out, dtype=np.int64) * int(np.prod(w[1:], dtype=np.int64)))
    if op == "ConvTranspose":
        x, w = _shape(node.inputs[0]), _shape(node.inputs[1])
        if x is None or w is None:
            return None
        return int(np.prod(x, dtype=np.int64) * int(np.prod(w[1:], dtype=np.int64)))
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        a_index = 0
        b_index = 3 if op == "QLinearMatMul" else 1
        a, b = _shape(node.inputs[a_index]), _shape(node.inputs[b_index])
        if out is None or a is None or b is None:
            return None
        if op == "Gemm":
            k = a[0] if node.attrs.get("transA", 0) else a[-1]
        else:
            k = a[-1]
        return int(np.prod(out, dtype=np.int64) * k)
    return 0


def graph_costs(graph: gs.Graph) -> dict[str, Any]:
    """Parameters, MACs by op type, and how many nodes had unknown shapes."""
    macs_by_op: dict[str, int] = defaultdict(int)
    unknown = 0
    for sub in iter_graphs(graph):
        for node in sub.nodes:
            macs = node_macs(node)
            if macs is None:
                unknown += 1
            elif macs:
                macs_by_op[node.op] += macs
    params = sum(
        int(np.prod(t.shape, dtype=np.int64)) for sub in iter_graphs(graph) for t in sub.tensors().values() if isinstance(t, gs.Constant)
    )
    params += sum(  # weights held in Constant nodes (Paddle and TF exports) count too
        int(np.asarray(node.attrs["value"].values).size)
        for sub in iter_graphs(graph)
        for node in sub.nodes
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant)
    )
    return {
        "parameters": params,
        "macs": sum(macs_by_op.values()),
        "macs_by_op": dict(sorted(macs_by_op.items(), key=lambda kv: -kv[1])),
        "nodes_with_unknown_shape": unknown,
    }


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    counts: Counter[str] = Counter()

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            counts[(n.domain + "." if n.domain not in ("", "ai.onnx") else "") + n.op_type] += 1
            for a in n.attribute:
                if a.HasField("g"):
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)

    walk(model.graph)
    return dict(counts.most_common())


def concrete_costs(
    graph: gs.Graph, input_shapes: dict | None = None, infer: Callable[[gs.Graph, dict], Any] | None = None
) -> tuple[dict[str, Any], dict[int, int]]:
    """graph_costs, and every node's MACs keyed by id(node), at concrete shapes: dynamic input dims
    take the values verification and profiling use (`input_shapes` where given, else 1). The
    graph itself is not modified; structural passes budget against these numbers (they read them
    as the "costs" analysis). `infer(copy, input_shapes)` annotates shapes on the copy; the
    default is the shape-inference pass, found through the pipeline's registry."""
    if infer is None:

        def infer(copy, shapes):
            return get_pass("shape-inference")().run(copy, PassContext(input_shapes=dict(shapes or {})))

    copy = graph.copy()
    shapes = {spec.name: spec.shape for spec in input_specs(export_model(graph), input_shapes)}
    inputs = {id(t) for t in copy.inputs}
    for tensor in copy.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in inputs:
            tensor.shape = None  # inferred afresh from the concrete inputs
    for tensor in copy.inputs:
        if tensor.name in shapes:
            tensor.shape = list(shapes[tensor.name])
    infer(copy, input_shapes)
    per_node = {id(orig): node_macs(twin) or 0 for orig, twin in zip(graph.nodes, copy.nodes)}
    return graph_costs(copy), per_node
