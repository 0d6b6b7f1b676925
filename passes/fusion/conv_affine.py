"""Per-channel constant arithmetic after a convolution folded into its weights and bias.

`conv(x) * c`, `conv(x) + c`, `conv(x) - c` and `conv(x) / c` with `c` constant per output
channel (a scalar, or shaped (C,1,1) / (1,C,1,1)) equal a conv with scaled filters or a shifted
bias; this also covers the separate bias Add many exporters emit. Refused when `c` would
broadcast the output to a bigger shape, when `c` is not constant, when the conv's filters are
shared with another node, or for `c - conv(x)` and `c / conv(x)`.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ops import CONV
from onnxopt.passes.fusion.channels import conv_rank, conv_weight, fold_affine, out_channels, per_channel
from onnxopt.passes.fusion.rules import Rule, RulePass, other_input
from onnxopt.pipeline import register_pass


class _FoldConvArithmetic(Rule):
    """Conv -> (Mul|Add|Sub|Div by a per-channel constant)."""

    def _operand(self, conv, op_node):
        weight = conv_weight(self, conv)
        if weight is None:
            return None
        other = other_input(op_node, conv.outputs[0])
        values = self.const(other)
        if values is None or values.dtype != weight.dtype:
            return None
        if op_node.op in ("Sub", "Div") and op_node.inputs[0] is not conv.outputs[0]:
            return None  # c - conv(x) and c / conv(x) are not affine in the conv's bias
        return per_channel(values, conv_rank(weight), out_channels(conv, weight))

    def check(self, conv, op_node):
        vector = self._operand(conv, op_node)
        return vector is not None and not (op_node.op == "Div" and np.any(vector == 0))

    def rewrite(self, conv, op_node):
        vector = self._operand(conv, op_node)
        scale, shift = {
            "Mul": (vector, None),
            "Div": (1.0 / vector, None),
            "Add": (None, vector),
            "Sub": (None, -vector),
        }[op_node.op]
        fold_affine(self, conv, scale, shift)
        self.absorb(conv, op_node)


def _rule(conv_op: str, op: str) -> type[Rule]:
    return type(f"Fold{conv_op}{op}", (_FoldConvArithmetic,), {"pattern": (conv_op, op), "__doc__": f"{conv_op} -> {op} by a per-channel constant."})


CONV_AFFINE_RULES = tuple(_rule(conv_op, op) for conv_op in sorted(CONV) for op in ("Mul", "Add", "Sub", "Div"))


@register_pass
class FoldConvAffine(RulePass):
    """Fold per-channel constant Mul/Add/Sub/Div after Conv/ConvTranspose into its weights and bias."""

    name = "fold-conv-affine"
    description = "fold per-channel constant Mul/Add/Sub/Div (and bias Adds) into Conv/ConvTranspose"
    rules = CONV_AFFINE_RULES
