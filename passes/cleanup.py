"""Exact cleanup passes: shape inference, constant folding, Identity/Dropout removal,
dead-code elimination and deduplication of identical initializers.

Each keeps the model's outputs bit-identical or equal to float tolerance (folding evaluates the
same ops in onnxruntime ahead of time). Subgraphs of If/Loop/Scan are folded and cleaned through
gs's own recursion, which keeps outer-scope references intact; Identity removal never renames a
tensor across a subgraph boundary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graphs import bypass, const_value, constant_nbytes, export_model, iter_graphs, node_count, replace_uses
from onnxopt.instruments import NONDETERMINISTIC_OPS
from onnxopt.pipeline import Pass, PassContext, PassResult, option, register_pass


@dataclass
class ShapeInferenceConfig:
    symbolic: bool = option(True, "also run onnxruntime's symbolic shape inference when dims are symbolic")
    skeleton_bytes: int = option(1 << 20, "initializers larger than this are replaced by typed inputs while inferring, to keep memory low")


def _dims(type_proto: onnx.TypeProto) -> list | None:
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


@register_pass
class ShapeInference(Pass):
    """Annotate every tensor with dtype and shape (onnx's inference, then ORT's symbolic one)."""

    name = "shape-inference"
    exact = True
    Config = ShapeInferenceConfig
    description = "infer dtypes and shapes of every tensor (onnx, then onnxruntime symbolic inference)"

    def _skeleton(self, graph: gs.Graph) -> onnx.ModelProto:
        """The model with large weights replaced by typed inputs: same shapes, a fraction of the memory."""
        skeleton = graph.copy()
        for tensor in list(skeleton.tensors().values()):
            if isinstance(tensor, gs.Constant) and constant_nbytes(tensor) > self.config.skeleton_bytes:
                stand_in = gs.Variable(tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))
                replace_uses(skeleton, tensor, stand_in)
                skeleton.inputs.append(stand_in)
        return export_model(skeleton)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        model = self._skeleton(graph)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:
            ctx.warn(f"onnx shape inference failed: {str(exc).splitlines()[0]}")
            inferred = model
        if self.config.symbolic and _has_unknown_dims(inferred):
            inferred = _symbolic_inference(inferred, ctx)
        infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        tensors = graph.tensors()
        updated = 0
        for name, vi in infos.items():
            tensor = tensors.get(name)
            if not isinstance(tensor, gs.Variable):
                continue
            dims = _dims(vi.type)
            elem = vi.type.tensor_type.elem_type
            if tensor.dtype is None and elem:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
                updated += 1
            if _more_specific(dims, tensor.shape):
                tensor.shape = dims
                updated += 1
        return PassResult(changed=updated > 0, stats={"tensors_annotated": updated})


def _has_unknown_dims(model: onnx.ModelProto) -> bool:
    known = {vi.name for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    produced = {o for n in model.graph.node for o in n.output if o}
    if produced - known:
        return True
    return any(
        d.dim_param or not d.HasField("dim_value")
        for vi in model.graph.input
        for d in vi.type.tensor_type.shape.dim
    )


def _symbolic_inference(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """onnxruntime's symbolic inference, driven the way its infer_shapes() does, except that on an
    incomplete result infer_shapes() saves sym_shape_infer_temp.onnx (and weights under a random
    name) into the user's current directory."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset

        if (get_opset(model) or 0) < 7:
            return model
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
        inference._preprocess(model)
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
        if not complete:
            ctx.warn("symbolic shape inference skipped: incomplete")
            return model
        return inference.out_mp_
    except Exception as exc:  # symbolic inference gives up on many custom graphs; onnx's result stands
        ctx.warn(f"symbolic shape inference skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return model


@dataclass
class ConstantFoldingConfig:
    max_folded_bytes: int = option(16 << 20, "do not materialize folded tensors larger than this (e.g. Expand/Tile of constants)")
    keep_ops: tuple[str, ...] = option(
        ("QuantizeLinear", "DequantizeLinear"), "op types never folded (Q/DQ must stay for int8 runtimes)"
    )
    fold_shapes: bool = option(True, "fold Shape nodes whose input shape is statically known")


@register_pass
class ConstantFolding(Pass):
    """Precompute everything that depends only on constants: Constant nodes, ConstantOfShape, shape sub-graphs."""

    name = "constant-folding"
    exact = True
    Config = ConstantFoldingConfig
    description = "Constant nodes to initializers; evaluate constant and static-shape sub-graphs ahead of time"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = node_count(graph)
        keep = set(self.config.keep_ops) | NONDETERMINISTIC_OPS
        graph.fold_constants(
            fold_shapes=self.config.fold_shapes,
            recurse_subgraphs=True,
            partitioning="basic",
            error_ok=True,
            flatten_subgraphs=False,
            size_threshold=self.config.max_folded_bytes,
            should_exclude_node=lambda node: node.op in keep,
        )
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True).toposort()
        after = node_count(graph)
        return PassResult(changed=after != before, stats={"nodes_folded": before - after})


def _is_inference_dropout(node: gs.Node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False  # the mask is used
    if len(node.inputs) >= 3 and node.inputs[2].name:
        mode = node.inputs[2]
        return isinstance(mode, gs.Constant) and not bool(np.asarray(mode.values).any())
    return True


@register_pass
class RemoveIdentity(Pass):
    """Identity and inference-mode Dropout forward their input unchanged; drop them."""

    name = "remove-identity"
    exact = True
    description = "remove Identity and inference-mode Dropout nodes"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        removed = 0
        for sub in iter_graphs(graph):
            for node in list(sub.nodes):
                if node.op == "Identity" or (node.op == "Dropout" and _is_inference_dropout(node)):
                    if node.inputs and node.outputs and bypass(sub, node):
                        removed += 1
            if removed:
                sub.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(changed=removed > 0, stats={"removed": removed})


@register_pass
class DeadCodeElimination(Pass):
    """Nodes whose outputs reach no graph output do no useful work; unused initializers go with them."""

    name = "dead-code-elimination"
    exact = True
    description = "remove nodes and initializers that no graph output depends on"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = node_count(graph)
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True).toposort()
        after = node_count(graph)
        return PassResult(changed=after != before, stats={"nodes_removed": before - after})


@register_pass
class DedupInitializers(Pass):
    """Identical weights stored twice (common after export) become one tensor."""

    name = "dedup-initializers"
    exact = True
    description = "merge initializers with identical dtype, shape and bytes"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        protected = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
        merged = 0
        saved = 0
        for sub in iter_graphs(graph):
            # per graph: a subgraph's constant is invisible to its siblings. Only constants that share
            # dtype and shape with another are read, so unique weights are never loaded.
            groups: dict[tuple, list[gs.Constant]] = {}
            for tensor in sub.tensors().values():
                if isinstance(tensor, gs.Constant) and id(tensor) not in protected:
                    groups.setdefault((str(tensor.dtype), tuple(tensor.shape)), []).append(tensor)
            for candidates in groups.values():
                seen: dict[bytes, gs.Constant] = {}
                for tensor in candidates if len(candidates) > 1 else ():
                    first = seen.setdefault(_digest(tensor), tensor)
                    if first is not tensor and tensor.outputs:
                        replace_uses(sub, tensor, first)
                        merged += 1
                        saved += constant_nbytes(tensor)
        return PassResult(changed=merged > 0, stats={"merged": merged, "bytes_saved": saved})


def _digest(tensor: gs.Constant) -> bytes:
    """A hash of the values; lazily imported weights are read once and not kept in memory."""
    values = tensor._values.load() if isinstance(tensor._values, gs.ir.tensor.LazyValues) else const_value(tensor)
    return hashlib.blake2b(np.ascontiguousarray(values), digest_size=16).digest()  # hashes the buffer, no copy
