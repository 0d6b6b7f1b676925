"""Attention heads as prunable groups: find the multi-head pattern exporters emit, remove heads.

PyTorch exporters (opset 14-17, decomposed or fused LayerNorm/GELU) write self-attention as

    q|k|v = MatMul(x, W) [+ b] -> Reshape(.., [B, S, H, d]) -> Transpose (k: to [B, H, d, S])
    scores = MatMul(q, k) [* or / scale] [+ mask] -> Softmax -> MatMul(probs, v)
    -> Transpose -> Reshape(.., [B, S, H*d or -1]) -> MatMul(Wo) [+ bo]

A head is then d columns of Wq, Wk, Wv (and their biases), the head's slice of the scores, and
d rows of Wo. Removing a head slices those weights and rewrites the head count in the split
Reshape targets (a constant, or the constant entry of a Concat built from Shape) and H*d in the
merge target; the kept heads compute exactly what they computed before. Whatever differs from
this pattern (fused Attention ops, a mask with a per-head axis that is not constant, a head count
computed at run time) is reported with the reason instead of being pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import FreshNames, constant_input_value

FUSED_ATTENTION_OPS = {"Attention", "MultiHeadAttention", "PackedAttention", "GroupQueryAttention"}
SCORE_OPS = {"Add", "Mul", "Div", "Sub", "Where", "Cast"}


class NotAttention(Exception):
    """The pattern around a Softmax differs from multi-head attention; the message says where."""


@dataclass
class ShapeEntry:
    """Entry `position` of the int tensor at input `index` of `node` (a Reshape or a Concat)."""

    node: gs.Node
    index: int
    position: int


@dataclass
class Projection:
    matmul: gs.Node
    bias: gs.Node | None  # the Add holding the constant bias, when there is one


@dataclass
class HeadGroup:
    """One attention block: its heads are the prunable classes."""

    name: str
    heads: int
    head_dim: int
    projections: list[Projection]  # query, key, value
    split_entries: list[ShapeEntry]  # hold H
    merge_entry: ShapeEntry | None  # holds H*d (None when the merge target is -1 there)
    output: gs.Node  # MatMul(context, Wo)
    head_tensors: list[gs.Tensor] = field(default_factory=list)  # shapes to re-infer after removal
    masks: list[tuple[gs.Node, int]] = field(default_factory=list)  # constant operands with a head axis
    attention: list[gs.Node] = field(default_factory=list)  # MatMul(q, k) and MatMul(probs, v)

    @property
    def mac_nodes(self) -> list[gs.Node]:
        """Nodes whose MACs scale with the number of heads."""
        return [p.matmul for p in self.projections] + self.attention + [self.output]

    @property
    def n_classes(self) -> int:
        return self.heads

    def columns(self, kept_heads: np.ndarray) -> np.ndarray:
        """Feature indices (of Wq/Wk/Wv columns and Wo rows) that belong to the kept heads."""
        return (np.asarray(kept_heads)[:, None] * self.head_dim + np.arange(self.head_dim)).reshape(-1)


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def _single_consumer(tensor: gs.Tensor, op: str | None = None) -> gs.Node:
    if len(tensor.outputs) != 1 or (op is not None and tensor.outputs[0].op != op):
        raise NotAttention(f"{tensor.name} is read by {len(tensor.outputs)} nodes, expected one {op or ''}".strip())
    return tensor.outputs[0]


def _int_entries(node: gs.Node, index: int) -> list[tuple[ShapeEntry, int | None]]:
    """Each entry of a Reshape target with where it lives and its value (None: computed at run time)."""
    target = node.inputs[index]
    values = constant_input_value(target)
    if values is not None:
        return [(ShapeEntry(node, index, i), int(v)) for i, v in enumerate(np.atleast_1d(values))]
    concat = _producer(target)
    if concat is None or concat.op != "Concat":
        raise NotAttention(f"Reshape {node.name!r}: target shape is neither a constant nor a Concat")
    entries = []
    for i, part in enumerate(concat.inputs):
        value = constant_input_value(part)
        if value is not None:
            entries += [(ShapeEntry(concat, i, j), int(v)) for j, v in enumerate(np.atleast_1d(value))]
            continue
        source = _producer(part)
        if source is None or source.op != "Unsqueeze":
            raise NotAttention(f"Concat {concat.name!r}: entry {i} is neither a constant nor an unsqueezed scalar")
        entries.append((ShapeEntry(concat, i, -1), None))
    return entries


def _split(transpose: gs.Node, perm: list[int]) -> tuple[gs.Node, ShapeEntry | None, int, int, gs.Node]:
    """Transpose(Reshape(proj, [B, S, H, d]), perm): the projection node, the entry holding H, H, d."""
    if transpose.op != "Transpose" or list(transpose.attrs.get("perm", [])) != perm:
        raise NotAttention(f"{transpose.name!r}: expected Transpose with perm {perm}")
    reshape = _producer(transpose.inputs[0])
    if reshape is None or reshape.op != "Reshape":
        raise NotAttention(f"{transpose.name!r}: heads are not split by a Reshape")
    _single_consumer(reshape.outputs[0], "Transpose")
    entries = _int_entries(reshape, 1)
    if len(entries) != 4:
        raise NotAttention(f"Reshape {reshape.name!r}: target is not [batch, seq, heads, head_dim]")
    heads, head_dim = entries[2][1], entries[3][1]
    if head_dim is None or head_dim <= 0:
        raise NotAttention(f"Reshape {reshape.name!r}: head size is not a constant")
    if heads is None or heads == 0 or heads < -1:
        raise NotAttention(f"Reshape {reshape.name!r}: head count is computed at run time")
    entry = entries[2][0] if heads > 0 else None
    if entry is not None and entry.position < 0:
        raise NotAttention(f"Reshape {reshape.name!r}: head count is computed at run time")
    heads = heads if heads > 0 else None  # -1: follows from the projection width
    return _producer(reshape.inputs[0]), entry, heads, head_dim, reshape


def _projection(node: gs.Node | None, width: int) -> Projection:
    bias = None
    if node is not None and node.op == "Add":
        consts = [i for i, t in enumerate(node.inputs) if constant_input_value(t) is not None]
        if len(consts) != 1:
            raise NotAttention(f"Add {node.name!r}: projection bias is not one constant")
        b = constant_input_value(node.inputs[consts[0]])
        if b.shape[-1:] != (width,) or b.size != width:
            raise NotAttention(f"Add {node.name!r}: bias does not have one value per feature")
        bias = node
        _single_consumer(node.outputs[0], "Reshape")
        node = _producer(node.inputs[1 - consts[0]])
        if node is not None:
            _single_consumer(node.outputs[0], "Add")
    if node is None or node.op != "MatMul":
        raise NotAttention("a query/key/value projection is not a MatMul with constant weights")
    w = constant_input_value(node.inputs[1])
    if w is None or w.ndim != 2 or w.shape[1] != width:
        raise NotAttention(f"MatMul {node.name!r}: projection weight is not a constant (in, heads*head_dim) matrix")
    return Projection(node, bias)


def _scores_chain(softmax: gs.Node, heads: int | None) -> tuple[gs.Node, list[tuple[gs.Node, int]], list[gs.Tensor]]:
    """Walk from the Softmax back through scale and mask ops to MatMul(q, k)."""
    masks, tensors = [], []
    node = _producer(softmax.inputs[0])
    while node is not None and node.op in SCORE_OPS:
        data = [i for i, t in enumerate(node.inputs) if _producer(t) is not None and _producer(t).op in SCORE_OPS | {"MatMul"} and _reaches_matmul(t)]
        if len(data) != 1:
            raise NotAttention(f"{node.op} {node.name!r}: cannot tell the scores from the mask")
        for i, t in enumerate(node.inputs):
            if i == data[0]:
                continue
            shape = t.shape
            if shape is None or len(shape) < 3:
                if constant_input_value(t) is not None and constant_input_value(t).size == 1:
                    continue
                if shape is None:
                    raise NotAttention(f"{node.op} {node.name!r}: mask shape unknown")
                continue
            axis_size = shape[-3]
            if axis_size == 1 or heads is None:
                continue
            if not isinstance(axis_size, int) and _built_without(t, heads):
                continue  # a run-time mask (e.g. expanded from attention_mask) that cannot hold a head axis
            if constant_input_value(t) is not None and heads is not None and axis_size == heads:
                masks.append((node, i))
                continue
            raise NotAttention(f"{node.op} {node.name!r}: mask has a per-head axis that is not constant (size {axis_size} of {t.name})")
        tensors.append(node.outputs[0])
        node = _producer(node.inputs[data[0]])
    if node is None or node.op != "MatMul":
        raise NotAttention(f"Softmax {softmax.name!r}: scores do not come from a MatMul")
    tensors.append(node.outputs[0])
    return node, masks, tensors


def _built_without(tensor: gs.Tensor, heads: int) -> bool:
    """A run-time tensor computed from graph inputs with no weight and no int constant equal to the
    head count: whatever its symbolic head-axis size, it can only be 1 (broadcast over heads)."""
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        value = constant_input_value(t)
        if value is not None:
            if value.dtype.kind in "iu" and heads in np.atleast_1d(value).tolist():
                return False
            if value.dtype.kind == "f" and value.size > 1:
                return False
            continue
        node = _producer(t)
        if node is None:
            continue
        if node.op in ("MatMul", "Gemm", "Conv", "Softmax") or len(seen) > 2000:
            return False
        if node.op == "Shape":  # only the shape of its input flows on
            if heads in list(node.inputs[0].shape or [heads]):
                return False
            continue
        stack.extend(node.inputs)
    return True


def _reaches_matmul(tensor: gs.Tensor, depth: int = 6) -> bool:
    node = _producer(tensor)
    while node is not None and depth > 0:
        if node.op == "MatMul":
            return True
        if node.op not in SCORE_OPS:
            return False
        nxt = [t for t in node.inputs if _producer(t) is not None]
        if not nxt:
            return False
        node, depth = _producer(nxt[0]), depth - 1
    return False


def match_attention(softmax: gs.Node) -> HeadGroup:
    """The head group around one Softmax, or NotAttention with the reason."""
    if int(softmax.attrs.get("axis", -1)) not in (-1, 3):
        raise NotAttention(f"Softmax {softmax.name!r}: not over the last axis of 4-D scores")
    scores, masks, tensors = _scores_chain(softmax, None)
    q_proj, q_entry, heads, head_dim, q_reshape = _split(_producer(scores.inputs[0]) or softmax, [0, 2, 1, 3])
    k_proj, k_entry, k_heads, k_dim, k_reshape = _split(_producer(scores.inputs[1]) or softmax, [0, 2, 3, 1])
    probs = softmax.outputs[0]
    context = _single_consumer(probs, "MatMul")
    if context.inputs[0] is not probs:
        raise NotAttention(f"MatMul {context.name!r}: probabilities are not its first input")
    v_proj, v_entry, v_heads, v_dim, v_reshape = _split(_producer(context.inputs[1]) or softmax, [0, 2, 1, 3])
    if len({k_dim, v_dim, head_dim}) != 1:
        raise NotAttention(f"Softmax {softmax.name!r}: query, key and value head sizes differ")
    width = constant_input_value(q_proj.inputs[1]).shape[-1] if q_proj is not None and q_proj.op == "MatMul" else None
    if width is None and q_proj is not None and q_proj.op == "Add":
        width = max(constant_input_value(t).size for t in q_proj.inputs if constant_input_value(t) is not None)
    if not width or width % head_dim:
        raise NotAttention(f"Softmax {softmax.name!r}: projection width is not a multiple of the head size")
    if any(h not in (None, width // head_dim) for h in (heads, k_heads, v_heads)):
        raise NotAttention(f"Softmax {softmax.name!r}: query, key and value head counts differ")
    heads = width // head_dim
    _, masks, tensors = _scores_chain(softmax, heads)
    merge_t = _single_consumer(context.outputs[0], "Transpose")
    if list(merge_t.attrs.get("perm", [])) != [0, 2, 1, 3]:
        raise NotAttention(f"Transpose {merge_t.name!r}: context is not merged back to [B, S, H, d]")
    merge = _single_consumer(merge_t.outputs[0], "Reshape")
    entries = _int_entries(merge, 1)
    if len(entries) != 3 or entries[2][1] not in (-1, heads * head_dim):
        raise NotAttention(f"Reshape {merge.name!r}: merge target is not [batch, seq, heads*head_dim] (or -1)")
    merge_entry = entries[2][0] if entries[2][1] == heads * head_dim else None
    if merge_entry is not None and merge_entry.position < 0:
        raise NotAttention(f"Reshape {merge.name!r}: merged width is computed at run time")
    output = _single_consumer(merge.outputs[0], "MatMul")
    wo = constant_input_value(output.inputs[1]) if output.inputs[0] is merge.outputs[0] else None
    if wo is None or wo.ndim != 2 or wo.shape[0] != heads * head_dim:
        raise NotAttention(f"MatMul {output.name!r}: output projection is not a constant (heads*head_dim, out) matrix")
    projections = [_projection(p, width) for p in (q_proj, k_proj, v_proj)]
    if len({id(p.matmul) for p in projections}) != 3:
        raise NotAttention(f"Softmax {softmax.name!r}: query, key and value share a projection")
    head_tensors = [t for p in projections for t in ((p.bias or p.matmul).outputs[0], p.matmul.outputs[0])]
    head_tensors += [r.outputs[0] for r in (q_reshape, k_reshape, v_reshape)]
    head_tensors += [_single_consumer(r.outputs[0]).outputs[0] for r in (q_reshape, k_reshape, v_reshape)]
    head_tensors += tensors + [probs, context.outputs[0], merge_t.outputs[0], merge.outputs[0]]
    split_entries = [e for e in (q_entry, k_entry, v_entry) if e is not None]
    name = output.name or softmax.name
    return HeadGroup(name, heads, head_dim, projections, split_entries, merge_entry, output, head_tensors, masks, [scores, context])


def find_attention(graph: gs.Graph) -> tuple[list[HeadGroup], list[str]]:
    """Every attention block whose heads can be pruned, and why the others cannot."""
    groups, blocked = [], []
    for node in graph.nodes:
        if node.op in FUSED_ATTENTION_OPS:
            blocked.append(f"{node.op} {node.name!r}: fused attention op; heads are pruned where they are split by Reshape")
        elif node.op == "Softmax":
            try:
                groups.append(match_attention(node))
            except NotAttention as why:
                if _looks_like_attention(node):
                    blocked.append(f"attention at {node.name!r}: {why}")
    return groups, blocked


def _looks_like_attention(softmax: gs.Node) -> bool:
    """A Softmax whose output feeds a MatMul: worth a reason when its heads are not pruned."""
    return any(c.op == "MatMul" for c in softmax.outputs[0].outputs)


def _replace_entry(entry: ShapeEntry, value: int, fresh: FreshNames) -> None:
    source = entry.node.inputs[entry.index]
    values = np.array(np.atleast_1d(constant_input_value(source)), copy=True)
    values[entry.position] = value
    values = values.reshape(np.shape(constant_input_value(source)))
    entry.node.inputs[entry.index] = gs.Constant(fresh(f"{source.name}_heads"), values)


def remove_heads(graph: gs.Graph, group: HeadGroup, kept_heads: np.ndarray) -> None:
    """Slice the group's weights to the kept heads and rewrite the head count (kept order preserved)."""
    kept_heads = np.sort(np.asarray(kept_heads, dtype=np.int64))
    cols = group.columns(kept_heads)
    fresh = FreshNames(graph)

    def sliced(node: gs.Node, index: int, axis: int) -> None:
        source = node.inputs[index]
        values = np.take(constant_input_value(source), cols, axis=axis)
        node.inputs[index] = gs.Constant(fresh(f"{source.name}_heads"), np.ascontiguousarray(values))

    for p in group.projections:
        sliced(p.matmul, 1, 1)
        if p.bias is not None:
            index = next(i for i, t in enumerate(p.bias.inputs) if constant_input_value(t) is not None)
            sliced(p.bias, index, -1)
    sliced(group.output, 1, 0)
    for entry in group.split_entries:
        _replace_entry(entry, len(kept_heads), fresh)
    if group.merge_entry is not None:
        _replace_entry(group.merge_entry, len(kept_heads) * group.head_dim, fresh)
    for node, index in group.masks:
        source = node.inputs[index]
        values = constant_input_value(source)
        node.inputs[index] = gs.Constant(fresh(f"{source.name}_heads"), np.ascontiguousarray(np.take(values, kept_heads, axis=values.ndim - 3)))
    for tensor in group.head_tensors:
        if isinstance(tensor, gs.Variable):
            tensor.shape = None
    group.heads = len(kept_heads)


def token_mask_input(graph: gs.Graph, groups: list[HeadGroup]) -> str | None:
    """The graph input every attention block's run-time score mask is built from (BERT's
    attention_mask), when there is exactly one and it is (batch, sequence): positions where it is
    0 are padding, which no real token attends to, so their outputs need not be preserved."""
    inputs = {t.name for t in graph.inputs}
    found = set()
    for group in groups:
        if not group.attention:
            continue
        node = group.attention[0]
        while True:
            nxt = [c for c in node.outputs[0].outputs if c.op in SCORE_OPS]
            if len(nxt) != 1:
                break
            node = nxt[0]
            for t in node.inputs:
                if constant_input_value(t) is None and not _reaches_matmul(t):
                    found |= _graph_inputs_of(t) & inputs
    if len(found) != 1:
        return None
    name = found.pop()
    tensor = next(t for t in graph.inputs if t.name == name)
    return name if tensor.shape is not None and len(tensor.shape) == 2 else None


def _graph_inputs_of(tensor: gs.Tensor) -> set[str]:
    """Names of the graph inputs whose values (not only shapes) flow into `tensor`."""
    stack, seen, names = [tensor], set(), set()
    while stack and len(seen) < 2000:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        node = _producer(t)
        if node is None:
            if constant_input_value(t) is None:
                names.add(t.name)
            continue
        if node.op != "Shape":
            stack.extend(node.inputs)
    return names
