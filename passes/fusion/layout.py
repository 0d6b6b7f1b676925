"""Layout chains collapsed: Transpose after Transpose, and reshape-like ops after one another.

Two Transposes compose into one permutation (none when it is the identity). A Reshape only looks
at its input's element count, so whatever reshape-like op (Reshape, Flatten, Squeeze, Unsqueeze)
came before it can be skipped, as long as its shape has no 0 (which copies a dim from the
skipped op's output). Two Unsqueezes merge their axes. A chain whose final shape is statically
known becomes one Reshape to that shape. All exact: only metadata changes, never values.
"""

from __future__ import annotations

import numpy as np

from onnxopt.graphs import rank_of
from onnxopt.ops import RESHAPE_LIKE
from onnxopt.passes.fusion.rules import Rule, RulePass, remove, static_shape
from onnxopt.pipeline import register_pass


def perm_of(node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    rank = rank_of(node.inputs[0])
    return list(range(rank))[::-1] if rank is not None else None


class MergeTransposes(Rule):
    """Transpose(p1) -> Transpose(p2): one Transpose(p1[p2]), or nothing if that is the identity."""

    pattern = ("Transpose", "Transpose")

    def check(self, first, second):
        p1, p2 = perm_of(first), perm_of(second)
        if p1 is None or p2 is None or len(p1) != len(p2):
            return False
        combined = [p1[i] for i in p2]
        if combined == sorted(combined):
            return self.can_merge(first.inputs[0], second.outputs[0])  # both go
        return True

    def rewrite(self, first, second):
        p1, p2 = perm_of(first), perm_of(second)
        combined = [p1[i] for i in p2]
        source = first.inputs[0]
        if combined == sorted(combined):
            remove(first)
            self.bypass(second, source)
            return
        second.attrs["perm"] = combined
        second.inputs[0] = source
        remove(first)


def _axes(rule: Rule, node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        values = rule.const(node.inputs[1])
        return None if values is None else [int(a) for a in values.reshape(-1)]
    return None


class _SkipBeforeReshape(Rule):
    """(Reshape|Flatten|Squeeze|Unsqueeze) -> Reshape(shape without 0): read the first op's input."""

    def check(self, first, reshape):
        shape = self.const(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
        return reshape.inputs[0] is first.outputs[0] and shape is not None and not np.any(shape == 0)

    def rewrite(self, first, reshape):
        reshape.inputs[0] = first.inputs[0]
        remove(first)


SKIP_BEFORE_RESHAPE = tuple(
    type(f"Skip{op}BeforeReshape", (_SkipBeforeReshape,), {"pattern": (op, "Reshape"), "__doc__": _SkipBeforeReshape.__doc__})
    for op in sorted(RESHAPE_LIKE)
)


class MergeUnsqueezes(Rule):
    """Unsqueeze(a1) -> Unsqueeze(a2): one Unsqueeze with the axes of both, in output positions."""

    pattern = ("Unsqueeze", "Unsqueeze")

    def _merged(self, first, second):
        a1, a2 = _axes(self, first), _axes(self, second)
        rank = rank_of(first.inputs[0])
        if a1 is None or a2 is None or rank is None:
            return None
        final = rank + len(a1) + len(a2)
        mid = rank + len(a1)
        a1 = [a % mid for a in a1]
        a2 = sorted(a % final for a in a2)
        kept = [i for i in range(final) if i not in a2]  # output positions of the middle tensor's axes
        return sorted(a2 + [kept[a] for a in a1])

    def check(self, first, second):
        return self._merged(first, second) is not None

    def rewrite(self, first, second):
        merged = self._merged(first, second)
        second.inputs[0] = first.inputs[0]
        if "axes" in second.attrs:
            second.attrs["axes"] = merged
        else:
            second.inputs[1] = self.new_const(second.inputs[1].name, np.asarray(merged, np.int64))
        remove(first)


class _StaticReshapeChain(Rule):
    """Two reshape-like ops whose final shape is fully known: one Reshape to that shape."""

    def check(self, first, second):
        shape = static_shape(second.outputs[0])
        return shape is not None and 0 not in shape

    def rewrite(self, first, second):
        shape = self.new_const(f"{second.name}_shape", np.asarray(static_shape(second.outputs[0]), np.int64))
        self.replace([first, second], "Reshape", [first.inputs[0], shape])


STATIC_CHAINS = tuple(
    type(f"Static{a}{b}", (_StaticReshapeChain,), {"pattern": (a, b), "__doc__": _StaticReshapeChain.__doc__})
    for a in sorted(RESHAPE_LIKE) for b in ("Flatten", "Squeeze", "Unsqueeze")
)

def dim_refs(rule: Rule, tensor, depth: int = 0) -> list | None:
    """What each element of a small 1-D (or scalar) int tensor is: ("dim", t, i) for dim i of
    tensor t, or ("const", v). Follows Shape, Gather, Slice, Cast, Unsqueeze/Squeeze on axis 0 and
    Concat, the arithmetic exporters use to build Reshape targets; None for anything else."""
    values = rule.const(tensor)
    if values is not None:
        return [("const", int(v)) for v in values.reshape(-1)] if values.dtype.kind in "iu" and values.ndim <= 1 else None
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if node is None or depth > 8:
        return None
    if node.op == "Shape":
        rank = rank_of(node.inputs[0])
        if rank is None:
            return None
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        return [("dim", node.inputs[0], i) for i in range(rank)][start:None if end is None else int(end)]
    if node.op == "Cast" and int(node.attrs.get("to", 0)) in (6, 7):  # int32/int64: dims fit either
        return dim_refs(rule, node.inputs[0], depth + 1)
    if node.op in ("Unsqueeze", "Squeeze"):
        axes = _axes(rule, node)
        return dim_refs(rule, node.inputs[0], depth + 1) if axes == [0] else None
    if node.op == "Concat":
        parts = [dim_refs(rule, t, depth + 1) for t in node.inputs]
        return None if any(p is None for p in parts) else [r for p in parts for r in p]
    if node.op in ("Gather", "Slice"):
        source = dim_refs(rule, node.inputs[0], depth + 1)
        if source is None:
            return None
        if node.op == "Gather":
            index = rule.const(node.inputs[1])
            if index is None or int(node.attrs.get("axis", 0)) != 0:
                return None
            picked = [int(i) for i in index.reshape(-1)]
            return [source[i] for i in picked] if all(-len(source) <= i < len(source) for i in picked) else None
        bounds = [rule.const(t) if t.name else None for t in node.inputs[1:]]
        if len(bounds) < 2 or bounds[0] is None or bounds[1] is None or any(b is None for b, t in zip(bounds, node.inputs[1:]) if t.name):
            return None
        if len(bounds) > 2 and bounds[2] is not None and [int(a) for a in bounds[2].reshape(-1)] not in ([0], [-1]):
            return None
        step = int(bounds[3].reshape(-1)[0]) if len(bounds) > 3 and bounds[3] is not None else 1
        return source[int(bounds[0].reshape(-1)[0]):int(min(bounds[1].reshape(-1)[0], 2**62)):step]
    return None


class ReshapeDimsFromInput(Rule):
    """Reshape(x, shape built from Shape ops): dims copied from x itself become 0, other known
    dims constants, so the shape is a constant and the shape arithmetic goes away.

    A 0 in a Reshape target (allowzero=0) copies that position's dim of the input; it is used
    only where the computed value is provably that dim (the same tensor and index, or the same
    symbolic dim name from shape inference). One dim that is neither becomes -1: wherever the
    original Reshape succeeds, the element count forces -1 to that same value (an input with a
    zero-sized dim, where -1 is undefined, is the one exception)."""

    pattern = ("Reshape",)

    def _target(self, reshape):
        if reshape.attrs.get("allowzero", 0) or self.const(reshape.inputs[1]) is not None:
            return None
        refs = dim_refs(self, reshape.inputs[1])
        data = reshape.inputs[0]
        if refs is None:
            return None
        target = []
        for j, ref in enumerate(refs):
            if ref[0] == "const":
                target.append(ref[1])
                continue
            _, t, i = ref
            dim = t.shape[i] if t.shape is not None else None
            same_symbol = isinstance(dim, str) and dim and data.shape is not None and j < len(data.shape) and data.shape[j] == dim
            if (t is data and i == j) or same_symbol:
                target.append(0)
            elif isinstance(dim, (int, np.integer)) and dim > 0:
                target.append(int(dim))
            else:
                target.append(-1)
        return target if sum(1 for v in target if v == -1) <= 1 else None

    def check(self, reshape):
        return self._target(reshape) is not None

    def rewrite(self, reshape):
        reshape.inputs[1] = self.new_const(f"{reshape.name}_shape", np.asarray(self._target(reshape), np.int64))


LAYOUT_RULES = (MergeTransposes, *SKIP_BEFORE_RESHAPE, MergeUnsqueezes, *STATIC_CHAINS, ReshapeDimsFromInput)


@register_pass
class SimplifyLayout(RulePass):
    """Merge or cancel Transpose pairs and collapse chains of reshape-like ops."""

    name = "simplify-layout"
    description = "merge/cancel Transpose chains; collapse Reshape/Flatten/Squeeze/Unsqueeze chains"
    rules = LAYOUT_RULES
