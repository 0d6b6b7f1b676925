"""Float16 conversion for GPU execution providers (the `ort-fp16` target).

Weights and activations of most nodes become float16: half the memory traffic and Tensor Core
math on a GPU. It is lossy (exact=False), so it is guarded:
- the model's inputs and outputs stay float32: Cast nodes at the boundary, callers see no change;
- a block list of ops stays float32: reductions (sums over many values lose digits and overflow),
  index- and box-producing ops (Range, CumSum, TopK, NonMaxSuppression, RoiAlign), and Resize's
  roi and scales, which its kernels read as float32;
- any node whose inputs or outputs exceed `overflow_limit` in magnitude on calibration data (or
  seeded random inputs when there is none, with a warning), or whose constants would overflow or
  lie wholly in float16's subnormal range (an epsilon like 1e-12), stays float32;
- per input, only positions whose ONNX type constraint admits float16 are converted (the schema
  decides), so a mixed-type op keeps its float32-only inputs;
- nodes with subgraphs, non-default domains, quantization ops and ops whose output type comes from
  an attribute (Cast, RandomNormal, ...) are left alone, and so are the producers of tensors that a
  subgraph reads from the outer scope.
Casts are inserted where float16 and float32 regions meet, one per tensor.

Fidelity (cosine, max relative error against the float32 graph, on the same samples) is measured
in onnxruntime on the CPU twice: `fidelity` on an emulation that rounds every float16 tensor
through float16 (what a GPU stores, overflow included) and `fidelity_ort_cpu` on the converted
model as ORT's CPU provider runs it (float32 math for ops without float16 kernels, so optimistic).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.evaluation import output_difference
from onnxopt.graphs import FreshNames, export_model, has_subgraph, iter_graphs
from onnxopt.inputs import input_specs, random_feeds
from onnxopt.ops import ACCUMULATING_REDUCE, TYPE_FROM_ATTRIBUTE
from onnxopt.pipeline import Pass, PassContext, PassResult, option, register_pass
from onnxopt.runtime import make_session, run_session

FP16_MAX = float(np.finfo(np.float16).max)
FP16_MIN_NORMAL = 2.0**-14  # below it float16 is subnormal (fewer digits) and under 2**-24 zero

DEFAULT_BLOCK_OPS = tuple(sorted(ACCUMULATING_REDUCE)) + ("Range", "CumSum", "TopK", "NonMaxSuppression", "RoiAlign")
KEEP_FLOAT32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}


@dataclass
class Float16Config:
    block_ops: tuple[str, ...] = option(DEFAULT_BLOCK_OPS, "op types that stay float32")
    block_nodes: tuple[str, ...] = option((), "node names that stay float32")
    overflow_limit: float = option(16384.0, "nodes whose values exceed this magnitude on calibration data stay float32 (float16 max is 65504)")
    samples: int = option(8, "calibration samples used for the overflow check and the fidelity measurement")


def _is_float32(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32


def _schema(node: gs.Node, opset: int):
    try:
        return onnx.defs.get_schema(node.op, opset, node.domain or "")
    except Exception:
        return None


def _formal(params, index: int):
    if index < len(params):
        return params[index]
    last = params[-1] if params else None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    return last if last is not None and last.option == variadic else None


def _fp16_constraints(schema) -> set[str]:
    return {c.type_param_str for c in schema.type_constraints if "tensor(float16)" in c.allowed_type_strs}


def _convertible_positions(node: gs.Node, schema) -> tuple[list[int], list[int]]:
    """(input positions, output positions) that may turn float16: float32 now, constraint admits float16."""
    allowed = _fp16_constraints(schema)
    keep = KEEP_FLOAT32_INPUTS.get(node.op, ())
    inputs, used = [], set()
    for i, tensor in enumerate(node.inputs):
        param = _formal(schema.inputs, i)
        if not tensor.name or i in keep or param is None or not _is_float32(tensor) or param.type_str not in allowed:
            continue
        inputs.append(i)
        used.add(param.type_str)
    outputs = []
    for j, tensor in enumerate(node.outputs):
        param = _formal(schema.outputs, j)
        if param is not None and _is_float32(tensor) and param.type_str in used:
            outputs.append(j)
    return inputs, outputs


def _const_ok(values: np.ndarray) -> bool:
    """False when float16 would turn the constant into inf, or the whole tensor into zeros and
    subnormals (an epsilon like 1e-12). A few tiny entries beside normal ones (near-zero weights)
    flush to zero harmlessly: they were below float16's resolution of the tensor anyway."""
    magnitude = np.abs(values[np.isfinite(values)]) if values.size else values
    if not magnitude.size:
        return True
    top = float(magnitude.max())
    return top <= FP16_MAX and (top == 0.0 or top >= FP16_MIN_NORMAL)


def _outer_scope_tensors(graph: gs.Graph) -> set[str]:
    """Names a subgraph reads from the enclosing graph: their type must not change."""
    names = set()
    for node in graph.nodes:
        if not has_subgraph(node):
            continue
        for attr in node.attrs.values():
            for sub in attr if isinstance(attr, list) else [attr]:
                if not isinstance(sub, gs.Graph):
                    continue
                for inner in iter_graphs(sub):
                    local = {t.name for t in inner.inputs} | {o.name for n in inner.nodes for o in n.outputs}
                    for n in inner.nodes:
                        names |= {t.name for t in n.inputs if isinstance(t, gs.Variable) and t.name not in local}
    return names


def _samples(model: onnx.ModelProto, ctx: PassContext, count: int) -> tuple[list[dict[str, np.ndarray]], str]:
    if ctx.calibration is not None:
        feeds = list(itertools.islice(iter(ctx.calibration), count))
        if feeds:
            return feeds, "calibration"
    ctx.warn("float16 overflow check ran on seeded random inputs; pass --calib for real value ranges")
    specs = input_specs(model, ctx.input_shapes)
    return [random_feeds(specs, seed=ctx.seed + i) for i in range(max(min(count, 4), 1))], "random"


def _value_ranges(graph: gs.Graph, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """The largest magnitude every float32 tensor of the graph reaches on the samples."""
    probe = graph.copy()
    existing = {t.name for t in probe.outputs}
    tensors = probe.tensors()
    for name, tensor in tensors.items():
        if isinstance(tensor, gs.Variable) and _is_float32(tensor) and tensor.inputs and name not in existing:
            probe.outputs.append(tensor)
    model = export_model(probe)
    session = make_session(model, opt_level="disable")
    peak: dict[str, float] = {}
    for feed in feeds:
        for name, value in run_session(session, feed).items():
            value = np.asarray(value)
            if value.dtype.kind == "f" and value.size:
                finite = np.abs(value[np.isfinite(value)])
                top = float(finite.max()) if finite.size else 0.0
                if np.isinf(value).any():  # NaN (e.g. Sqrt of a negative) is no overflow; inf is
                    top = float("inf")
                peak[name] = max(peak.get(name, 0.0), top)
    return peak


def _fidelity(before: onnx.ModelProto, after: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    ref, cand = make_session(before, opt_level="disable"), make_session(after, opt_level="disable")
    cosines, rel = [], []
    for feed in feeds:
        for diff in output_difference(run_session(ref, feed), run_session(cand, feed)).values():
            cosines.append(diff.get("cosine", 0.0))
            rel.append(diff.get("max_rel", float("inf")))
    return {"min_cosine": min(cosines, default=1.0), "max_rel_error": max(rel, default=0.0)}


def _emulation(graph: gs.Graph, plan: dict[int, tuple[list[int], list[int]]]) -> onnx.ModelProto:
    """The float32 graph with float16 rounding where the plan puts float16: converted weights and
    every converted output pass through float16 (Cast pairs, overflow becomes inf), while each op
    computes in float32 as GPU kernels accumulate. ORT's CPU provider cannot show this on the
    converted model itself: it runs float16 nodes without CPU kernels in float32 and drops the
    casts around them, so it sees little more than weight rounding.
    """
    sim = graph.copy()
    fresh = FreshNames(sim)

    rounded: dict[int, gs.Tensor] = {}
    extra: list[gs.Node] = []

    def round_trip(source: gs.Tensor, target: gs.Tensor) -> None:
        half = gs.Variable(fresh(f"{target.name}_half"), dtype=np.float16, shape=target.shape)
        extra.append(gs.Node("Cast", attrs={"to": onnx.TensorProto.FLOAT16}, inputs=[source], outputs=[half]))
        extra.append(gs.Node("Cast", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[half], outputs=[target]))

    for node, twin in zip(list(graph.nodes), list(sim.nodes)):
        if (node.op, node.name) != (twin.op, twin.name):
            raise RuntimeError("graph.copy() reordered nodes; the float16 emulation cannot follow the plan")
        if id(node) not in plan:
            continue
        inputs, outputs = plan[id(node)]
        for i in inputs:
            tensor = twin.inputs[i]
            producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
            if isinstance(tensor, gs.Constant):
                if id(tensor) not in rounded:
                    values = np.asarray(tensor.values).astype(np.float16).astype(np.float32)
                    rounded[id(tensor)] = gs.Constant(fresh(f"{tensor.name}_r16"), values)
                twin.inputs[i] = rounded[id(tensor)]
            elif producer is None or producer.op != "Cast" or producer not in extra:
                if id(tensor) not in rounded:
                    rounded[id(tensor)] = gs.Variable(fresh(f"{tensor.name}_r16"), dtype=np.float32, shape=tensor.shape)
                    round_trip(tensor, rounded[id(tensor)])
                twin.inputs[i] = rounded[id(tensor)]
        for j in outputs:
            out = twin.outputs[j]
            raw = gs.Variable(fresh(f"{out.name}_f32"), dtype=np.float32, shape=out.shape)
            twin.outputs[j] = raw
            round_trip(raw, out)
    sim.nodes.extend(extra)
    sim.cleanup(remove_unused_graph_inputs=False).toposort()
    return export_model(sim)


@register_pass
class ConvertFloat16(Pass):
    """Run float32 nodes in float16, except where range, type rules or the block list say no."""

    name = "convert-float16"
    exact = False
    Config = Float16Config
    description = "float16 weights and activations (float32 I/O, block list, overflow check on calibration data)"

    def _plan(self, graph: gs.Graph, ranges: dict[str, float], reasons: Counter) -> dict[int, tuple[list[int], list[int]]]:
        opset = int(graph.opset)
        pinned = _outer_scope_tensors(graph)
        limit = self.config.overflow_limit
        plan = {}
        for node in graph.nodes:
            floats = [t for t in list(node.inputs) + list(node.outputs) if _is_float32(t)]
            if not floats:
                continue
            if node.op in self.config.block_ops or (node.name and node.name in self.config.block_nodes):
                reasons["block_list"] += 1
                continue
            if node.domain not in (None, "", "ai.onnx") or node.op in TYPE_FROM_ATTRIBUTE or has_subgraph(node):
                reasons["op_kind"] += 1
                continue
            if any(o.name in pinned for o in node.outputs):
                reasons["subgraph_reads_output"] += 1
                continue
            schema = _schema(node, opset)
            if schema is None:
                reasons["no_schema"] += 1
                continue
            inputs, outputs = _convertible_positions(node, schema)
            if not inputs:
                reasons["type_constraints"] += 1
                continue
            if any(ranges.get(t.name, 0.0) > limit for t in floats):
                reasons["overflow"] += 1
                continue
            if any(isinstance(node.inputs[i], gs.Constant) and not _const_ok(np.asarray(node.inputs[i].values)) for i in inputs):
                reasons["constant_range"] += 1
                continue
            plan[id(node)] = (inputs, outputs)
        return plan

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        graph.toposort()
        before = export_model(graph)
        feeds, source = _samples(before, ctx, self.config.samples)
        ranges = _value_ranges(graph, feeds)
        reasons: Counter = Counter()
        plan = self._plan(graph, ranges, reasons)
        if not plan:
            return PassResult(False, {"converted_nodes": 0, "kept_float32": dict(reasons), "data": source})

        emulated = _emulation(graph, plan)
        converted: set[int] = set()
        for node in graph.nodes:
            for j in plan.get(id(node), ((), ()))[1]:
                converted.add(id(node.outputs[j]))

        fresh = FreshNames(graph)

        to16: dict[int, gs.Tensor] = {}
        to32: dict[int, gs.Tensor] = {}
        new_nodes: list[gs.Node] = []

        def cast(tensor: gs.Tensor, dtype, cache) -> gs.Tensor:
            if id(tensor) not in cache:
                if isinstance(tensor, gs.Constant):
                    cache[id(tensor)] = gs.Constant(fresh(f"{tensor.name}_fp16"), np.asarray(tensor.values).astype(np.float16))
                else:
                    out = gs.Variable(fresh(f"{tensor.name}_{np.dtype(dtype).name}"), dtype=dtype, shape=tensor.shape)
                    to = onnx.TensorProto.FLOAT16 if dtype == np.float16 else onnx.TensorProto.FLOAT
                    new_nodes.append(gs.Node("Cast", name=fresh(f"cast_{out.name}"), attrs={"to": to}, inputs=[tensor], outputs=[out]))
                    cache[id(tensor)] = out
            return cache[id(tensor)]

        for node in list(graph.nodes):
            inputs, outputs = plan.get(id(node), ((), ()))
            for i, tensor in enumerate(list(node.inputs)):
                if i in inputs and id(tensor) not in converted:
                    node.inputs[i] = cast(tensor, np.float16, to16)
                elif i not in inputs and id(tensor) in converted:
                    node.inputs[i] = cast(tensor, np.float32, to32)
            for j in outputs:
                node.outputs[j].dtype = np.float16

        for out in list(graph.outputs):
            if id(out) not in converted:
                continue
            half = gs.Variable(fresh(f"{out.name}_fp16"), dtype=np.float16, shape=out.shape)
            producer = out.inputs[0]
            producer.outputs[producer.outputs.index(out)] = half
            for consumer in list(graph.nodes) + new_nodes:
                for i, tensor in enumerate(consumer.inputs):
                    if tensor is out:
                        consumer.inputs[i] = half
            out.dtype = np.float32
            new_nodes.append(gs.Node("Cast", name=fresh(f"cast_{out.name}"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[half], outputs=[out]))

        graph.nodes.extend(new_nodes)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        stats: dict[str, Any] = {
            "converted_nodes": len(plan),
            "casts_inserted": len(new_nodes),
            "kept_float32": dict(reasons),
            "data": source,
            "samples": len(feeds),
            "fidelity": _fidelity(before, emulated, feeds),
            "fidelity_ort_cpu": _fidelity(before, export_model(graph), feeds),
        }
        ctx.artifacts["report:float16"] = stats
        return PassResult(True, stats)
