"""Zero Pad merged into the Conv or pooling that follows it.

Exporters of "same" padding (TensorFlow, EfficientNet ports) emit an explicit Pad before a Conv
whose own pads are zero. Zero padding then convolving equals convolving with larger pads, so the
Pad's spatial pads are added to the Conv's. AveragePool counts padded zeros only with
`count_include_pad=1`, which the merge sets (refused if the pool already pads without counting);
MaxPool pads with -inf, so only a -inf Pad merges into it. Refused for non-constant modes or pads,
padding on the batch or channel axis, negative pads, `auto_pad`, and `ceil_mode` pools.
"""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.rules import Rule, RulePass, present, remove, scalar_of
from onnxopt.pipeline import register_pass


def pad_amounts(rule: Rule, pad) -> tuple[np.ndarray, float] | None:
    """(pads as begin..., end... over all axes, constant value) of a constant-mode Pad, else None."""
    mode = pad.attrs.get("mode", "constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return None
    if "pads" in pad.attrs:  # opset < 11
        pads, value = np.asarray(pad.attrs["pads"], np.int64), float(pad.attrs.get("value", 0.0))
    else:
        pads = rule.const(pad.inputs[1]) if len(pad.inputs) > 1 else None
        if pads is None:
            return None
        value = 0.0
        if len(pad.inputs) > 2 and present(pad.inputs[2]):
            value = scalar_of(rule.const(pad.inputs[2]))
            if value is None:
                return None
        if len(pad.inputs) > 3 and present(pad.inputs[3]):
            return None  # axes (opset 18): rare, left alone
    pads = np.asarray(pads, np.int64).reshape(-1)
    if pads.size % 2 or np.any(pads < 0):
        return None
    return pads, value


def spatial_pads(pads: np.ndarray) -> list[int] | None:
    """The spatial part of full-rank Pad pads, in the Conv/pool layout; None if N or C is padded."""
    rank = pads.size // 2
    begins, ends = pads[:rank], pads[rank:]
    if rank < 3 or begins[0] or begins[1] or ends[0] or ends[1]:
        return None
    return [int(v) for v in begins[2:]] + [int(v) for v in ends[2:]]


class _MergePad(Rule):
    def _merged(self, pad, node):
        amounts = pad_amounts(self, pad)
        if amounts is None or node.inputs[0] is not pad.outputs[0]:
            return None
        extra = spatial_pads(amounts[0])
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        if extra is None or (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) not in ("NOTSET", ""):
            return None
        if not self.value_ok(amounts[1], node):
            return None
        own = list(node.attrs.get("pads", [0] * len(extra)))
        if len(own) != len(extra):
            return None
        return [a + b for a, b in zip(own, extra)]

    def value_ok(self, value: float, node) -> bool:
        return value == 0.0

    def check(self, pad, node):
        return self._merged(pad, node) is not None

    def rewrite(self, pad, node):
        node.attrs["pads"] = self._merged(pad, node)
        node.attrs.pop("auto_pad", None)
        node.inputs[0] = pad.inputs[0]
        remove(pad)


class MergePadConv(_MergePad):
    """Pad(0) -> Conv: add the pads to the Conv's."""

    pattern = ("Pad", "Conv")


class MergePadAveragePool(_MergePad):
    """Pad(0) -> AveragePool: pads with count_include_pad=1 average the same zeros."""

    pattern = ("Pad", "AveragePool")

    def value_ok(self, value, node):
        if value != 0.0 or node.attrs.get("ceil_mode", 0):
            return False
        own_pads = any(node.attrs.get("pads", []))
        return node.attrs.get("count_include_pad", 0) == 1 or not own_pads

    def rewrite(self, pad, node):
        super().rewrite(pad, node)
        node.attrs["count_include_pad"] = 1


class MergePadMaxPool(_MergePad):
    """Pad(-inf) -> MaxPool: MaxPool's own padding is -inf."""

    pattern = ("Pad", "MaxPool")

    def value_ok(self, value, node):
        return value == -np.inf and not node.attrs.get("ceil_mode", 0) and len([o for o in node.outputs if o.outputs]) <= 1 and len(node.outputs) == 1


PAD_RULES = (MergePadConv, MergePadAveragePool, MergePadMaxPool)


@register_pass
class MergePad(RulePass):
    """Merge constant Pads into the Conv, AveragePool or MaxPool that follows."""

    name = "merge-pad"
    description = "merge a zero Pad into the following Conv/AveragePool pads (-inf Pad into MaxPool)"
    rules = PAD_RULES
