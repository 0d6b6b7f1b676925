"""Exact cleanup passes: shape inference, constant folding, Identity/Dropout removal,
dead-code elimination and deduplication of identical initializers.

Each keeps the model's outputs bit-identical or equal to float tolerance (folding evaluates the
same ops in onnxruntime ahead of time). Subgraphs of If/Loop/Scan are folded and cleaned through
gs's own recursion, which keeps outer-scope references intact; Identity removal never renames a
tensor across a subgraph boundary.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import ConfigError
from onnxopt.graphs import annotate_shapes, bypass, const_value, constant_input_value, constant_nbytes, export_skeleton, iter_graphs, node_count, nontensor_types_hidden, replace_uses, touches_nontensor
from onnxopt.ops import NONDETERMINISTIC as NONDETERMINISTIC_OPS
from onnxopt.passes.dim_symbols import unify_dim_symbols
from onnxopt.pipeline import Pass, PassContext, PassResult, option, register_pass
from onnxopt.validation import SKELETON_BYTES


@dataclass
class ShapeInferenceConfig:
    symbolic: bool = option(True, "also run onnxruntime's symbolic shape inference when dims are symbolic")
    skeleton_bytes: int = option(SKELETON_BYTES, "initializers larger than this are replaced by typed inputs while inferring (shape constants are far smaller); keeps memory and time low")
    symbolic_timeout: float = option(5.0, "seconds allowed for symbolic inference before onnx's result is kept")
    symbolic_only_for_shape_ops: bool = option(False, "skip the (slow) symbolic engine when no Shape/Size node is left for it to resolve")
    unify_dims: bool = option(True, "name dims onnx left as different symbols alike where Reshape element counts or elementwise ops prove them equal")
    refresh: bool = option(False, "replace earlier inferred shapes by this run's when at least as specific (after folding, symbols like 'batch' reach further)")


@register_pass
class ShapeInference(Pass):
    """Annotate every tensor with dtype and shape (onnx's inference, then ORT's symbolic one)."""

    name = "shape-inference"
    exact = True
    Config = ShapeInferenceConfig
    description = "infer dtypes and shapes of every tensor (onnx, then onnxruntime symbolic inference)"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        model = export_skeleton(graph, self.config.skeleton_bytes)
        if self.config.refresh:
            del model.graph.value_info[:]  # infer from the inputs afresh, not from stale annotations
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:
            ctx.warn(f"onnx shape inference failed: {str(exc).splitlines()[0]}")
            inferred = model
        if self.config.unify_dims:
            unify_dim_symbols(inferred)
        # The symbolic engine earns its cost where onnx left shapes unknown, or where Shape/Size
        # nodes read dims it can name consistently (so fusion can prove a Reshape target constant).
        has_shape_ops = any(n.op_type in ("Shape", "Size") for n in model.graph.node)
        if self.config.symbolic_only_for_shape_ops:
            wanted = self.config.symbolic and has_shape_ops
        else:
            wanted = self.config.symbolic and (has_shape_ops or _has_unknown_dims(inferred))
        if wanted:
            inferred = _symbolic_inference(inferred, ctx, self.config.symbolic_timeout)
        updated = annotate_shapes(graph, inferred, refresh=self.config.refresh)
        return PassResult(changed=updated > 0, stats={"tensors_annotated": updated})


def _has_unknown_dims(model: onnx.ModelProto) -> bool:
    """True when onnx's inference left some produced tensor without a shape: symbolic inference's job."""
    known = {
        vi.name
        for vi in list(model.graph.value_info) + list(model.graph.output)
        if vi.type.tensor_type.HasField("shape")
    }
    produced = {o for n in model.graph.node for o in n.output if o}
    return bool(produced - known)


@functools.lru_cache(maxsize=1)
def _symbolic_engine():
    """ORT's SymbolicShapeInference, loaded from its file: importing onnxruntime.tools pulls in torch when installed."""
    import importlib.util

    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("onnxopt_ort_symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


def _symbolic_worker(model_bytes: bytes, conn) -> None:
    """Child process: run ORT's symbolic inference, keeping partial results, and send back the model.

    Its `infer_shapes` entry point saves `sym_shape_infer_temp.onnx` into the current folder when
    incomplete, so the engine is driven step by step instead (private ORT calls).
    """
    try:
        model = onnx.load_from_string(model_bytes)
        engine = _symbolic_engine()(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
        engine._preprocess(model)
        while engine.run_:
            engine._infer_impl()
        engine._update_output_from_vi()
        conn.send(("ok", (engine.out_mp_ or model).SerializeToString()))
    except Exception as exc:  # symbolic inference gives up on many custom graphs; onnx's result stands
        conn.send(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    finally:
        conn.close()


def _symbolic_inference(model: onnx.ModelProto, ctx: PassContext, timeout: float) -> onnx.ModelProto:
    """ORT's symbolic inference under a time limit: its sympy simplification can take minutes
    (Resize chains in detection models), and onnx's result is a fine answer when it does."""
    import multiprocessing

    if multiprocessing.current_process().daemon:  # e.g. a multiprocessing.Pool worker: it may not start processes
        ctx.warn("symbolic shape inference skipped: onnxopt runs in a daemonic process, which cannot start the worker that bounds its time")
        return model
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork":
        _symbolic_engine()  # imported once here (sympy is slow to import), inherited by every fork
    context = multiprocessing.get_context(method)
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_symbolic_worker, args=(model.SerializeToString(), child), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout):
            ctx.warn(f"symbolic shape inference skipped: it took over {timeout:g} s (raise shape-inference.symbolic_timeout)")
            return model
        status, payload = parent.recv()
    except EOFError:
        ctx.warn("symbolic shape inference skipped: its worker process died")
        return model
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        parent.close()
    if status != "ok":
        ctx.warn(f"symbolic shape inference skipped: {payload}")
        return model
    return onnx.load_from_string(payload)


@dataclass
class ConstantFoldingConfig:
    max_folded_bytes: int = option(16 << 20, "do not materialize folded tensors larger than this (e.g. Expand/Tile of constants)")
    keep_ops: tuple[str, ...] = option(
        ("QuantizeLinear", "DequantizeLinear"), "op types never folded (Q/DQ must stay for int8 runtimes)"
    )
    fold_shapes: bool = option(True, "fold Shape nodes whose input shape is statically known")
    partitioning: str = option(
        "auto", "none: one onnxruntime run over all constant nodes (fast); basic: one run per partition, which survives ops "
        "onnxruntime cannot evaluate (slow on big graphs); auto: none, falling back to basic if that run fails"
    )


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
        if self.config.fold_shapes:
            fold_shape_reads(graph)
        # Each graph on its own, outermost first: gs's recursion into subgraphs drops
        # should_exclude_node (it would fold Q/DQ, random ops and sequences inside If/Loop bodies).
        fold = lambda partitioning, error_ok: [  # noqa: E731
            sub.fold_constants(
                fold_shapes=False,  # gs's own shape folding ignores Shape's start/end: fold_shape_reads does it
                recurse_subgraphs=False,
                partitioning=partitioning,
                error_ok=error_ok,
                flatten_subgraphs=False,
                size_threshold=self.config.max_folded_bytes,
                # gs folds tensors only: a sequence or optional value stays as it is
                should_exclude_node=lambda node: node.op in keep or touches_nontensor(node),
            )
            for sub in list(iter_graphs(graph))
        ]
        mode = self.config.partitioning
        if mode not in ("auto", "none", "basic"):
            raise ConfigError(f"constant-folding.partitioning: {mode!r} is not one of auto, none, basic")
        with nontensor_types_hidden(graph):
            if mode == "auto":
                try:  # a failed run raises before it replaces anything; what it did before is exact
                    fold(None, False)
                except Exception:
                    fold("basic", True)
            else:
                fold(None if mode == "none" else "basic", True)
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True).toposort()
        after = node_count(graph)
        return PassResult(changed=after != before, stats={"nodes_folded": before - after})


def _static(dims) -> bool:
    return all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims)


def shape_slice(node: gs.Node, rank: int) -> slice:
    """The dims a Shape node returns: opset 15's start/end, negative ones counted from the back,
    both clamped to [0, rank]."""
    def clamp(value, default):
        value = default if value is None else int(value)
        return min(max(value + rank if value < 0 else value, 0), rank)

    return slice(clamp(node.attrs.get("start"), 0), clamp(node.attrs.get("end"), rank))


def _shape_values(node: gs.Node) -> list | None:
    if node.op != "Shape" or node.domain not in (None, "", "ai.onnx") or not node.inputs or not node.outputs:
        return None
    shape = node.inputs[0].shape
    if shape is None:
        return None
    dims = list(shape)
    return dims[shape_slice(node, len(dims))]


def _read_of_shape(consumer: gs.Node, dims: list) -> list | int | None:
    """The values a Gather (axis 0) or Slice (axis 0, positive steps) takes from a shape, or None."""
    values = [constant_input_value(t) for t in consumer.inputs[1:]]
    if consumer.op == "Gather" and int(consumer.attrs.get("axis", 0)) == 0 and values and values[0] is not None:
        indices = np.asarray(values[0]).astype(np.int64)
        if indices.size and (indices.min() < -len(dims) or indices.max() >= len(dims)):
            return None
        picked = [dims[int(i)] for i in indices.ravel()]
        return picked[0] if indices.ndim == 0 else np.array(picked, dtype=object).reshape(indices.shape).tolist()
    if consumer.op == "Slice" and len(values) >= 2 and all(v is not None for v in values):
        starts, ends = (np.asarray(v).ravel() for v in values[:2])
        axes = np.asarray(values[2]).ravel() if len(values) > 2 else np.zeros(1, np.int64)
        steps = np.asarray(values[3]).ravel() if len(values) > 3 else np.ones(1, np.int64)
        if starts.size != 1 or axes.tolist() not in ([0], [-1]) or steps.size != 1 or steps[0] <= 0:
            return None
        return dims[int(starts[0]):int(ends[0]):int(steps[0])]  # python's clamping is ONNX's for positive steps
    return None


def fold_shape_reads(graph: gs.Graph) -> int:
    """Shape nodes, and Gather/Slice nodes reading a Shape's output, whose values are static become
    constants. gs's shape folding ignores Shape's start/end (opset 15), so this replaces it."""
    folded = 0
    for sub in iter_graphs(graph):
        for node in list(sub.nodes):
            dims = _shape_values(node)
            if dims is None or not isinstance(node.outputs[0], gs.Variable):
                continue
            out = node.outputs[0]
            if _static(dims):
                node.outputs.clear()
                out.to_constant(np.array(dims, dtype=np.int64))
                folded += 1
                continue
            for consumer in list(out.outputs):
                if consumer.op not in ("Gather", "Slice") or len(consumer.outputs) != 1 or not isinstance(consumer.outputs[0], gs.Variable):
                    continue
                values = _read_of_shape(consumer, dims)
                if values is None or not _static(np.ravel(np.array(values, dtype=object)).tolist()):
                    continue
                result = consumer.outputs[0]
                consumer.outputs.clear()
                result.to_constant(np.array(values, dtype=np.int64))
                folded += 1
    return folded


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
