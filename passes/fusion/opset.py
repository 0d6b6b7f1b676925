"""Raising a model's default opset so a fusion can emit a newer standard op.

LayerNormalization needs opset 17, Gelu 20, HardSwish 14. Raising the opset is safe when every op
in the model means the same at the new version. For changes that only added types or optional
attributes (listed below from the ONNX changelog) the number is simply raised; otherwise onnx's
version converter rewrites the model, and the result is accepted only if it keeps the same ops
(adapters that restructure the graph are refused) and passes the checker.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import defs, version_converter

from onnxopt.graphs import constant_nbytes, export_skeleton, import_graph, iter_graphs, rank_of, replace_uses
from onnxopt.ops import SOFTMAX as SOFTMAX_FAMILY
from onnxopt.pipeline import PassContext
from onnxopt.validation import SKELETON_BYTES

# (op, since_version) of schema changes that keep every older model's meaning: new types or new
# optional attributes whose default is the old behaviour.
COMPATIBLE_CHANGES = {
    ("Pow", 15), ("Shape", 15), ("BatchNormalization", 15),
    ("Where", 16), ("GreaterOrEqual", 16), ("LessOrEqual", 16), ("LeakyRelu", 16), ("PRelu", 16),
    ("If", 16), ("Loop", 16), ("Scan", 16), ("Identity", 16), ("ScatterElements", 16), ("ScatterND", 16),
}


def _op_types(graph: gs.Graph) -> set[str]:
    return {n.op for sub in iter_graphs(graph) for n in sub.nodes if n.domain in (None, "", "ai.onnx")}


def _compatible(ops: set[str], old: int, new: int) -> bool:
    for op in ops:
        try:
            before = defs.get_schema(op, old).since_version
            after = defs.get_schema(op, new).since_version
        except Exception:
            return False
        if before != after and not all(
            (op, v) in COMPATIBLE_CHANGES for v in range(before + 1, after + 1) if _changed_at(op, v)
        ):
            return False
    return True


def _changed_at(op: str, version: int) -> bool:
    try:
        return defs.get_schema(op, version).since_version == version
    except Exception:
        return False


def _set_default_opset(graph: gs.Graph, version: int) -> None:
    graph.opset = version
    if graph.import_domains is not None:
        for opset in graph.import_domains:
            if opset.domain in ("", "ai.onnx"):
                opset.version = version


def _last_axis_softmax_to_minus_one(graph: gs.Graph) -> None:
    """Write axis=-1 on softmaxes over the last axis of a known rank: the same at every opset, and
    the converter's opset-13 adapter keeps such a node as it is instead of wrapping it in reshapes."""
    for sub in iter_graphs(graph):
        for node in sub.nodes:
            if node.op in SOFTMAX_FAMILY and node.inputs:
                rank = rank_of(node.inputs[0])
                if rank and int(node.attrs.get("axis", 1)) == rank - 1:
                    node.attrs["axis"] = -1


def raise_opset(graph: gs.Graph, version: int, ctx: PassContext) -> bool:
    """Raise the model's default opset to `version` in place when that is safe; True on success."""
    old = int(graph.opset)
    if old >= version:
        return True
    ops = _op_types(graph)
    if _compatible(ops, old, version):
        _set_default_opset(graph, version)
        return True
    _last_axis_softmax_to_minus_one(graph)
    if old < 13 <= version and any(
        n.op in SOFTMAX_FAMILY and int(n.attrs.get("axis", 1)) != -1 for sub in iter_graphs(graph) for n in sub.nodes
    ):  # the converter would wrap it in Flatten/Reshape: say so without paying for the conversion
        ctx.warn(f"opset {old} -> {version} would restructure the graph (a Softmax over an axis of unknown rank); fusions needing it skipped")
        return False
    # The converter rewrites nodes, never weights: convert the graph with its weights as typed
    # inputs (a fraction of the bytes to serialize, copy and check), then put the weights back.
    model = export_skeleton(graph, SKELETON_BYTES)
    weights = {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant) and constant_nbytes(t) > SKELETON_BYTES}
    try:
        converted = version_converter.convert_version(model, version)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises bare RuntimeErrors for unsupported adapters
        ctx.warn(f"opset {old} -> {version} not possible ({type(exc).__name__}); fusions needing it skipped")
        return False
    count = lambda m: Counter(n.op_type for n in m.graph.node if n.op_type != "Constant")  # noqa: E731
    if count(converted) != count(model):
        ctx.warn(f"opset {old} -> {version} would restructure the graph; fusions needing it skipped")
        return False
    fresh = import_graph(converted)
    stand_ins = fresh.tensors()
    for name, weight in weights.items():
        if name in stand_ins:
            replace_uses(fresh, stand_ins[name], gs.Constant(name, weight._values, data_location=weight.data_location))
    fresh.inputs = [t for t in fresh.inputs if t.name not in weights]
    _constant_nodes_to_initializers(fresh)
    graph.__dict__.clear()
    graph.__dict__.update(fresh.__dict__)
    # An earlier round may have failed (ranks unknown until shapes were re-inferred); it did not stick.
    ctx.warnings[:] = [w for w in ctx.warnings if not w.startswith(f"opset {old} -> {version} ")]
    return True


def _constant_nodes_to_initializers(graph: gs.Graph) -> None:
    """Adapters write attributes that became inputs (Squeeze axes, ...) as Constant nodes."""
    for sub in iter_graphs(graph):
        for node in sub.nodes:
            value = node.attrs.get("value") if node.op == "Constant" else None
            if isinstance(value, gs.Constant) and len(node.outputs) == 1:
                out = node.outputs[0]
                node.outputs.clear()
                out.to_constant(np.asarray(value.values))
        sub.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=False)
