"""onnx-graphsurgeon helpers shared by passes: import/export, constants, rewiring.

gs is the in-memory IR. These helpers keep rewrites short and keep the one subtle rule in one
place: a tensor that is a graph output keeps its name, so removing the node that produces it means
renaming the surviving producer's output rather than dropping the name.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, update_import_domains

from onnxopt import ops
from onnxopt.errors import ModelInvalidError

# gs prints folding and cleanup chatter on stdout; the CLI owns the terminal.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    try:
        return gs.import_onnx(model)
    except Exception as exc:  # gs raises bare exceptions on malformed graphs
        raise ModelInvalidError(f"cannot import the graph: {exc}") from None


def export_model(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export a gs graph; keep the template's metadata and an IR version the opsets allow."""
    model = _export(graph, max_weight_bytes=None)
    model.producer_name = graph.producer_name or "onnxopt"
    model.producer_version = graph.producer_version or ""
    if template is not None:
        model.ir_version = max(template.ir_version, _min_ir_version(model))
        model.metadata_props.extend(template.metadata_props)
        model.doc_string = template.doc_string
        model.model_version = template.model_version
        model.domain = template.domain
    return model


def export_skeleton(graph: gs.Graph, max_weight_bytes: int) -> onnx.ModelProto:
    """The graph as a model for shape inference: weights over `max_weight_bytes` become typed graph
    inputs. Same shapes, a fraction of the bytes to copy and serialize."""
    return _export(graph, max_weight_bytes)


def _export(graph: gs.Graph, max_weight_bytes: int | None) -> onnx.ModelProto:
    """gs.export_onnx's result, built in place: gs copies every weight three times (into the
    initializer list, the GraphProto, the ModelProto) and renames the source model's own
    TensorProtos; here a weight is copied once and the source (the teacher) is left alone."""
    model = onnx.ModelProto()
    proto = model.graph
    proto.name = graph.name
    proto.doc_string = graph.doc_string or ""
    proto.input.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs)
    for node in graph.nodes:
        value = node.attrs.get("value") if node.op == "Constant" and len(node.outputs) == 1 else None
        if max_weight_bytes is not None and isinstance(value, gs.Constant) and constant_nbytes(value) > max_weight_bytes:
            # a weight held in a Constant node (Paddle, TF exports) becomes a typed input too
            proto.input.append(onnx.helper.make_tensor_value_info(node.outputs[0].name, _elem_type(value.dtype), list(value.shape)))
        else:
            proto.node.append(OnnxExporter.export_node(node))
    proto.output.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs)
    boundary = {t.name for t in graph.outputs} | {vi.name for vi in proto.input}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable):
            if tensor.name not in boundary and (tensor.dtype is not None or tensor.shape is not None):
                proto.value_info.append(OnnxExporter.export_value_info_proto(tensor, do_type_check=False))
        elif isinstance(tensor._values, gs.ir.tensor.SparseValues):
            proto.sparse_initializer.append(tensor._values.tensor)
        elif max_weight_bytes is not None and constant_nbytes(tensor) > max_weight_bytes:
            proto.input.append(onnx.helper.make_tensor_value_info(tensor.name, _elem_type(tensor.dtype), list(tensor.shape)))
        elif isinstance(tensor._values, gs.ir.tensor.LazyValues):
            weight = proto.initializer.add()
            weight.CopyFrom(tensor._values.tensor)
            weight.name = tensor.name
        else:
            proto.initializer.append(OnnxExporter.export_tensor_proto(tensor))
    model.opset_import.extend(update_import_domains(graph))
    model.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    model.ir_version = _min_ir_version(model)
    return model


def _elem_type(dtype) -> int:
    """An onnx element type from what gs stores: a numpy dtype, or an onnx type number for types numpy lacks."""
    if isinstance(dtype, (int, np.integer)):
        return int(dtype)
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _min_ir_version(model: onnx.ModelProto) -> int:
    try:
        return max(onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True), 7)
    except Exception:
        return onnx.IR_VERSION




def tensor_dims(type_proto: onnx.TypeProto) -> list | None:
    """A tensor type's dims as ints, symbol names, or None where unknown; None without a shape."""
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _more_specific(new: list | None, old) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    if len(new) != len(old):
        return False
    return any(isinstance(n, int) and not isinstance(o, int) for n, o in zip(new, old)) or any(
        isinstance(n, str) and o is None for n, o in zip(new, old)
    )


def _as_specific(new: list | None, old) -> bool:
    """Same rank and at least as many fixed dims (symbol names may differ)."""
    if new is None or old is None or len(new) != len(old):
        return False
    fixed = lambda dims: sum(isinstance(d, int) for d in dims)  # noqa: E731
    return None not in new and fixed(new) >= fixed(old)


def annotate_shapes(graph: gs.Graph, inferred: onnx.ModelProto, *, refresh: bool = False) -> int:
    """Copy dtypes and shapes from a shape-inferred export of `graph` onto its Variables, by name.

    A shape replaces the known one only when more specific, or (`refresh`) when at least as
    specific and different. Returns how many annotations changed."""
    tensors = graph.tensors()
    updated = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = tensors.get(vi.name)
        if not isinstance(tensor, gs.Variable):
            continue
        dims = tensor_dims(vi.type)
        elem = vi.type.tensor_type.elem_type
        if tensor.dtype is None and elem:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            updated += 1
        if _more_specific(dims, tensor.shape) or (refresh and _as_specific(dims, tensor.shape) and dims != list(tensor.shape)):
            tensor.shape = dims
            updated += 1
    return updated


def is_const(tensor: gs.Tensor | None) -> bool:
    return isinstance(tensor, gs.Constant)


def const_value(tensor: gs.Tensor) -> np.ndarray:
    return np.asarray(tensor.values)


def constant_input_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant input, whether an initializer or the output of a Constant node
    (Paddle and TF exports keep weights in Constant nodes); None for anything computed."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None




def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(inp is tensor for inp in graph.inputs)


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Point every consumer of `old` (nested subgraphs included) at `new`."""
    for node in list(old.outputs):
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new
    for i, out in enumerate(graph.outputs):
        if out is old:
            graph.outputs[i] = new


def merge_tensors(graph: gs.Graph, keep: gs.Tensor, drop: gs.Tensor) -> bool:
    """Make `keep` and `drop` one tensor (they must hold equal values). False when unsafe.

    When `drop` is a graph output its name must survive, so `keep`'s producer is made to
    produce `drop` instead; that needs `keep` to be an ordinary intermediate tensor.
    """
    if keep is drop:
        return True
    if not is_graph_output(graph, drop):
        replace_uses(graph, drop, keep)
        return True
    keep_node = producer(keep)
    if (
        keep_node is None
        or not any(n is keep_node for n in graph.nodes)
        or is_graph_output(graph, keep)
        or is_graph_input(graph, keep)
        or is_const(keep)
    ):
        return False
    for node in list(keep.outputs):
        for i, tensor in enumerate(node.inputs):
            if tensor is keep:
                node.inputs[i] = drop
    for i, out in enumerate(keep_node.outputs):
        if out is keep:
            drop_node = producer(drop)
            if drop_node is not None:
                drop_node.outputs = [o for o in drop_node.outputs if o is not drop]
            keep_node.outputs[i] = drop
    if drop.dtype is None:
        drop.dtype = keep.dtype
    if drop.shape is None:
        drop.shape = keep.shape
    return True


def bypass(graph: gs.Graph, node: gs.Node, data_input: int = 0) -> bool:
    """Remove a node whose first output equals one of its inputs (Identity, Dropout, no-op ops)."""
    src = node.inputs[data_input]
    dst = node.outputs[0]
    if not merge_tensors(graph, src, dst):
        return False
    node.outputs.clear()
    node.inputs.clear()
    return True


def iter_graphs(graph: gs.Graph) -> Iterable[gs.Graph]:
    """The graph and every nested subgraph (If/Loop/Scan bodies), outermost first."""
    yield graph
    for node in graph.nodes:
        for attr in node.attrs.values():
            subs = attr if isinstance(attr, list) else [attr]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    yield from iter_graphs(sub)


def node_count(graph: gs.Graph) -> int:
    return sum(len(g.nodes) for g in iter_graphs(graph))


def has_subgraph(node: gs.Node) -> bool:
    return any(
        isinstance(a, gs.Graph) or (isinstance(a, list) and any(isinstance(x, gs.Graph) for x in a))
        for a in node.attrs.values()
    )


def constant_nbytes(tensor: gs.Constant) -> int:
    """A constant's size without loading it: `.values` would read (and keep) a lazily imported weight.
    gs's LazyValues knows its size, also for types numpy lacks (bfloat16, float8)."""
    return int(tensor._values.nbytes)




def rank_of(tensor: gs.Tensor, depth: int = 0) -> int | None:
    """The rank when known: from shape inference, else derived through the producer (a Reshape to a
    constant shape, rank-preserving ops, broadcasting ops and MatMul, Transpose, Squeeze/Unsqueeze)."""
    shape = tensor.shape
    if shape is not None:
        return len(shape)
    maker = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if maker is None or depth > 32 or not maker.inputs or maker.outputs[0] is not tensor:
        return None
    op = maker.op
    if op == "Reshape" and isinstance(maker.inputs[1], gs.Constant):
        return int(np.asarray(maker.inputs[1].values).size)
    if op == "Transpose" and "perm" in maker.attrs:
        return len(maker.attrs["perm"])
    if op in ops.SAME_RANK:
        return rank_of(maker.inputs[0], depth + 1)
    if op in ops.BROADCASTING or op == "MatMul":
        ranks = [rank_of(t, depth + 1) for t in maker.inputs if t.name]
        if any(r is None for r in ranks):
            return None
        contracted = op == "MatMul" and min(ranks) == 1  # a 1-D operand's only dim is summed away
        return max(ranks) - 1 if contracted else max(ranks)
    if op in ("Squeeze", "Unsqueeze"):
        axes = maker.attrs.get("axes")
        if axes is None and len(maker.inputs) > 1 and isinstance(maker.inputs[1], gs.Constant):
            axes = np.asarray(maker.inputs[1].values).reshape(-1)
        rank = rank_of(maker.inputs[0], depth + 1)
        if axes is None or rank is None:
            return None
        return rank + len(axes) if op == "Unsqueeze" else rank - len(axes)
    return None


class FreshNames:
    """Names not yet used anywhere in a graph (subgraphs included); each call reserves one.

    Built once per rewrite, so naming many new tensors stays cheap.
    """

    def __init__(self, graph: gs.Graph):
        self.taken: set[str] = set()
        for sub in iter_graphs(graph):
            self.taken.update(sub.tensors().keys())
            self.taken.update(n.name for n in sub.nodes)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name
