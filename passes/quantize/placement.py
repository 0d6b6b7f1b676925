"""Where Q/DQ goes, per target: the plan of which nodes run in int8 and which tensors carry scales.

ort-int8 follows what ONNX Runtime's CPU int8 kernels fuse: a node runs in int8 only when every
float input arrives through DequantizeLinear and its output leaves through QuantizeLinear (then
QLinearConv, QGemm, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool replace the float op).
So the output of a quantized node is quantized too, after any Relu/Clip that follows it (ORT
drops the Clip when the Q range already clips), every consumer reads the dequantized tensor, and
shape-only ops and MaxPool pass a quantized tensor on with the same scale (QLinearConcat takes
a scale per input, so Concat shares nothing).

trt-int8 follows TensorRT's explicit quantization: Q/DQ on the activation inputs of Conv,
ConvTranspose, Gemm and MatMul and on the residual input of an Add that follows a quantized
Conv (so TensorRT fuses the Add into the Conv), symmetric int8 with zero point 0, one scale
shared by every quantized tensor around a Concat, nothing on graph outputs; other consumers of
a tensor keep reading the float tensor.

Weights are quantized per output channel: axis 0 for Conv and for Gemm with transB=1, axis 1
for ConvTranspose, for Gemm with transB=0 and for MatMul's 2-D right-hand weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import ConfigError
from onnxopt.graphs import const_value, is_const
from onnxopt.ops import LINEAR, QUANT_TRANSPARENT

WEIGHTED_OPS = tuple(sorted(LINEAR))
ACTIVATIONS = ("Relu", "Clip")
ORT_PASSTHROUGH = tuple(sorted(QUANT_TRANSPARENT))
ORT_EXTRA = ("Add", "GlobalAveragePool", "AveragePool", "Concat")


@dataclass(frozen=True)
class TargetRules:
    """What a target's int8 runtime wants."""

    name: str
    symmetric: bool
    output_qdq: bool  # quantize the outputs of quantized nodes (ORT fuses DQ -> op -> Q)
    all_consumers: bool  # every consumer reads the dequantized tensor (ORT) or only quantized ones (TRT)
    int32_bias: bool
    extra_ops: tuple[str, ...]
    passthrough_ops: tuple[str, ...]


RULES = {
    "ort": TargetRules("ort", symmetric=False, output_qdq=True, all_consumers=True, int32_bias=True, extra_ops=ORT_EXTRA, passthrough_ops=ORT_PASSTHROUGH),
    "trt": TargetRules("trt", symmetric=True, output_qdq=False, all_consumers=False, int32_bias=False, extra_ops=(), passthrough_ops=()),
}


def rules_for(target) -> TargetRules:
    """The Q/DQ rules a Target's `qdq_rules` capability names, or a rule set's name ("ort", "trt")."""
    kind = getattr(target, "qdq_rules", target)
    if kind not in RULES:
        raise ConfigError(f"unknown Q/DQ rules {kind!r}; use one of {', '.join(RULES)}")
    return RULES[kind]


@dataclass(frozen=True)
class WeightSpec:
    input_index: int
    axis: int | None  # None: one scale for the whole tensor
    transpose: bool = False  # weight stored (in, out): the reconstruction works on (out, in)


@dataclass
class QuantPlan:
    """Nodes that run in int8, their weights, and the activation tensors that get Q/DQ.

    `activations[t]` is None when every consumer of t reads the dequantized tensor, else the
    names of the consumers that do. `groups` are sets of tensors that must share one scale.
    """

    nodes: list[str] = field(default_factory=list)
    weights: dict[str, WeightSpec] = field(default_factory=dict)
    activations: dict[str, set[str] | None] = field(default_factory=dict)
    groups: list[set[str]] = field(default_factory=list)
    biases: dict[str, int] = field(default_factory=dict)  # node -> bias input index (int32 bias targets)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # tensor -> Relu/Clip bounds before its Q

    def group_of(self, tensor: str) -> set[str]:
        for group in self.groups:
            if tensor in group:
                return group
        return {tensor}


def weight_spec(node: gs.Node) -> WeightSpec | None:
    """The constant weight input of a weighted op and its output-channel axis, or None."""
    if node.op in ("Conv", "ConvTranspose"):
        if len(node.inputs) < 2 or not is_const(node.inputs[1]) or is_const(node.inputs[0]):
            return None
        if node.op == "ConvTranspose":
            return WeightSpec(1, 1 if int(node.attrs.get("group", 1)) == 1 else None)
        return WeightSpec(1, 0)
    if node.op == "Gemm":
        if len(node.inputs) < 2 or not is_const(node.inputs[1]) or is_const(node.inputs[0]) or node.attrs.get("transA", 0):
            return None
        trans_b = bool(node.attrs.get("transB", 0))
        return WeightSpec(1, 0 if trans_b else 1, transpose=not trans_b)
    if node.op == "MatMul":
        if len(node.inputs) == 2 and is_const(node.inputs[1]) and not is_const(node.inputs[0]) and const_value(node.inputs[1]).ndim == 2:
            return WeightSpec(1, 1, transpose=True)
    return None


def is_weighted_matmul(node: gs.Node) -> bool:
    """x @ W with a constant 2-D W: a MatMul, or a plain Gemm (alpha = beta = 1), which is what fusion
    makes of MatMul + bias Add; ORT can run either as a dynamically quantized MatMul."""
    if node.op == "Gemm" and (float(node.attrs.get("alpha", 1.0)) != 1.0 or float(node.attrs.get("beta", 1.0)) != 1.0):
        return False
    return node.op in ("MatMul", "Gemm") and weight_spec(node) is not None


def is_float_tensor(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32


def _activation_inputs(node: gs.Node) -> list[gs.Tensor]:
    return [t for t in node.inputs if isinstance(t, gs.Variable) and t.name and is_float_tensor(t)]


def _clip_bounds(node: gs.Node) -> tuple[float, float]:
    if node.op == "Relu":
        return 0.0, np.inf
    lo = float(const_value(node.inputs[1])) if len(node.inputs) > 1 and node.inputs[1].name else -np.inf
    hi = float(const_value(node.inputs[2])) if len(node.inputs) > 2 and node.inputs[2].name else np.inf
    return lo, hi


def _follow_activation(tensor: gs.Tensor, graph_outputs: set[str]) -> tuple[gs.Tensor, tuple[float, float] | None]:
    """Past a single-consumer Relu/Clip (constant bounds) chain: where ORT wants the Q, and the bounds."""
    bounds = None
    while len(tensor.outputs) == 1 and tensor.name not in graph_outputs:
        nxt = tensor.outputs[0]
        if nxt.op not in ACTIVATIONS or nxt.inputs[0] is not tensor:
            break
        if nxt.op == "Clip" and not all(is_const(t) for t in nxt.inputs[1:] if t.name):
            break
        lo, hi = _clip_bounds(nxt)
        bounds = (lo, hi) if bounds is None else (max(lo, bounds[0]), min(hi, bounds[1]))
        tensor = nxt.outputs[0]
    return tensor, bounds


def _from_conv(tensor: gs.Tensor) -> bool:
    """Produced by a Conv, directly or through Relu/Clip: the CNN residual QLinearAdd is made for.
    (A transformer's residual stream has outliers int8 cannot hold; its Adds stay float.)"""
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    while node is not None and node.op in ACTIVATIONS:
        node = node.inputs[0].inputs[0] if len(node.inputs[0].inputs) == 1 else None
    return node is not None and node.op in ("Conv", "ConvTranspose")


def is_residual_add(node: gs.Node) -> bool:
    return node.op == "Add" and len(node.inputs) == 2 and not any(is_const(t) for t in node.inputs)


def classifier_nodes(graph: gs.Graph) -> set[str]:
    """Weighted nodes whose output reaches a graph output through shape ops, a bias or a softmax: the final classifier."""
    found = set()
    outputs = {t.name for t in graph.outputs}
    for node in graph.nodes:
        if node.op not in ("Gemm", "MatMul") or weight_spec(node) is None:
            continue
        tensor = node.outputs[0]
        for _ in range(4):
            if tensor.name in outputs:
                found.add(node.name)
                break
            if len(tensor.outputs) != 1 or tensor.outputs[0].op not in ("Reshape", "Flatten", "Squeeze", "Add", "Softmax", "LogSoftmax", "Sigmoid"):
                break
            tensor = tensor.outputs[0].outputs[0]
    return found


def eligible(node: gs.Node, rules: TargetRules, attention: bool) -> bool:
    """Can this node run in int8 under these rules (before any fallback decision)?"""
    if node.op in WEIGHTED_OPS:
        if weight_spec(node) is not None:
            return all(is_float_tensor(t) for t in _activation_inputs(node)) and bool(_activation_inputs(node))
        return attention and node.op == "MatMul" and len(_activation_inputs(node)) == 2
    if node.op in rules.extra_ops:
        inputs = _activation_inputs(node)
        if node.op == "Add":
            return is_residual_add(node) and len(inputs) == 2 and any(_from_conv(t) for t in inputs)
        return bool(inputs) and len(inputs) == len([t for t in node.inputs if t.name])
    return False


def make_plan(graph: gs.Graph, rules: TargetRules, float_nodes: set[str] = frozenset(), *, attention: bool = False) -> QuantPlan:
    """The Q/DQ plan of a (folded, shape-annotated) float graph; `float_nodes` stay float."""
    plan = QuantPlan()
    outputs = {t.name for t in graph.outputs}
    quantized: list[gs.Node] = []
    for node in graph.nodes:
        if node.name in float_nodes or not node.name or not eligible(node, rules, attention):
            continue
        if rules.name == "trt" and node.op == "Add":
            continue  # handled below: only the residual input, only after a quantized Conv
        quantized.append(node)
    names = {n.name for n in quantized}

    def want(tensor: gs.Tensor, consumer: str | None) -> None:
        if tensor.name in outputs and rules.all_consumers:
            return  # a graph output stays float (its consumers then read float too)
        if rules.all_consumers or consumer is None:
            plan.activations[tensor.name] = None
        else:
            current = plan.activations.setdefault(tensor.name, set())
            if current is not None:
                current.add(consumer)

    for node in quantized:
        plan.nodes.append(node.name)
        spec = weight_spec(node)
        if spec is not None:
            plan.weights[node.name] = spec
            if rules.int32_bias and node.op in ("Conv", "Gemm") and len(node.inputs) > 2 and is_const(node.inputs[2]):
                if const_value(node.inputs[2]).ndim == 1:
                    plan.biases[node.name] = 2
        for tensor in _activation_inputs(node):
            want(tensor, node.name)
        if rules.output_qdq:
            out, bounds = _follow_activation(node.outputs[0], outputs)
            if out.name not in outputs and is_float_tensor(out):
                want(out, None)
                if bounds is not None:
                    plan.bounds[out.name] = bounds

    if rules.name == "trt":
        for node in graph.nodes:
            if node.name in float_nodes or not is_residual_add(node):
                continue
            producers = [t.inputs[0] if len(t.inputs) == 1 else None for t in node.inputs]
            from_conv = [p is not None and p.name in names and p.op in ("Conv", "ConvTranspose") for p in producers]
            if any(from_conv) and not all(from_conv):
                residual = node.inputs[from_conv.index(False)]
                if is_float_tensor(residual):
                    plan.nodes.append(node.name)
                    want(residual, node.name)
        _concat_groups(graph, plan)
    else:
        _passthrough(graph, rules, plan, float_nodes, outputs)
    return plan


def _passthrough(graph: gs.Graph, rules: TargetRules, plan: QuantPlan, float_nodes: set[str], outputs: set[str]) -> None:
    """MaxPool and shape-only ops carry a quantized input's scale on to their output, when an int8
    node reads it (a Q/DQ pair in front of a float op would only cost time)."""
    carried, added = [], set()
    for node in graph.nodes:  # topological order: chains propagate
        if node.op not in rules.passthrough_ops or node.name in float_nodes or not node.inputs:
            continue
        src, out = node.inputs[0], node.outputs[0]
        if src.name in plan.activations and out.name not in outputs and is_float_tensor(out) and len(node.outputs) == 1:
            if out.name not in plan.activations:
                added.add(out.name)
            carried.append(node)
            plan.activations.setdefault(out.name, None)
            plan.nodes.append(node.name)
    quantized = set(plan.nodes)
    for node in reversed(carried):
        out = node.outputs[0].name
        if out in added and not any(c.name in quantized for c in node.outputs[0].outputs):
            del plan.activations[out]
            plan.nodes.remove(node.name)
            quantized.discard(node.name)
    for node in carried:
        if node.name in quantized:
            _join(plan, {node.inputs[0].name, node.outputs[0].name})


def _concat_groups(graph: gs.Graph, plan: QuantPlan) -> None:
    for node in graph.nodes:
        if node.op != "Concat":
            continue
        members = {t.name for t in list(node.inputs) + list(node.outputs) if t.name in plan.activations}
        if len(members) > 1:
            _join(plan, members)


def _join(plan: QuantPlan, members: set[str]) -> None:
    merged = set(members)
    keep = []
    for group in plan.groups:
        if group & merged:
            merged |= group
        else:
            keep.append(group)
    keep.append(merged)
    plan.groups = keep
