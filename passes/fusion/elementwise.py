"""Elementwise arithmetic with constants made cheaper: Div by a constant becomes Mul by its
reciprocal, and two constant Adds (or Muls) in a row become one.

`x / c == x * (1/c)` up to one rounding of `1/c` (float tolerance; exact for powers of two), and
Mul is cheaper and folds further (into a Conv, or with a neighbouring Mul). One ulp matters where
the quotient is later rounded or compared (Round, Floor, Cast to an integer, QuantizeLinear,
comparisons: the expanded DynamicQuantizeLinear computes its zero point so): there only an exact
reciprocal (powers of two) is used. `(x + a) + b ==
x + (a + b)` and `(x * a) * b == x * (a * b)` up to float rounding; the broadcast shape of the
result is the same either way. Only float tensors; Div refuses constants with zeros.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.passes.fusion.rules import Rule, RulePass, is_float, other_input, remove
from onnxopt.pipeline import register_pass


class DivByConstantToMul(Rule):
    """x / c -> x * (1/c) for a float constant c without zeros."""

    pattern = ("Div",)

    def check(self, div):
        values = self.const(div.inputs[1])
        if not (is_float(values) and self.const(div.inputs[0]) is None and bool(np.all(values != 0))):
            return False
        return _exact_reciprocal(values) or not _reaches_rounding(div.outputs[0])

    def rewrite(self, div):
        values = self.const(div.inputs[1])
        div.op = "Mul"
        div.inputs[1] = self.new_const(f"{div.inputs[1].name}_reciprocal", (1.0 / values.astype(np.float64)).astype(values.dtype))


# Ops whose result can jump when their input moves by one ulp, and the ops a value passes through
# to reach one with its error intact (elementwise arithmetic and moves; a MatMul or a Softmax
# averages such an error away).
ROUNDING_OPS = frozenset({
    "Round", "Floor", "Ceil", "Sign", "Mod", "QuantizeLinear", "DynamicQuantizeLinear", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "ArgMax", "ArgMin", "TopK", "If", "Loop", "Scan",
})
PASS_THROUGH_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Clip", "Max", "Min", "Relu", "Identity", "Reshape", "Squeeze",
    "Unsqueeze", "Flatten", "Transpose", "Expand", "Concat", "Slice", "Gather", "Where", "Sum", "Mean",
})


def _exact_reciprocal(values: np.ndarray) -> bool:
    """Every value a power of two (its reciprocal is exact, barring overflow)."""
    mantissa, _ = np.frexp(values.astype(np.float64))
    reciprocal = 1.0 / values.astype(np.float64)
    return bool(np.all(np.abs(mantissa) == 0.5) and np.all(np.isfinite(reciprocal.astype(values.dtype))))


def _rounds(node) -> bool:
    if node.op in ("Cast", "CastLike"):
        to = node.attrs.get("to")
        if to is None and len(node.inputs) > 1 and node.inputs[1].dtype is not None:
            return np.dtype(node.inputs[1].dtype).kind not in "fc"
        return to is None or to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return node.op in ROUNDING_OPS


def _reaches_rounding(tensor, limit: int = 1000) -> bool:
    """Whether a rounding or comparing op reads the value through elementwise ops only."""
    seen, stack = set(), [tensor]
    while stack and len(seen) < limit:
        for node in stack.pop().outputs:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if _rounds(node):
                return True
            if node.op in PASS_THROUGH_OPS:
                stack.extend(node.outputs)
    return len(seen) >= limit


class _MergeConstantChain(Rule):
    """(x op a) op b -> x op (a op b), op commutative and associative."""

    def _parts(self, first, second):
        a = [t for t in first.inputs if self.const(t) is not None]
        b = other_input(second, first.outputs[0])
        if len(first.inputs) != 2 or len(a) != 1 or b is None:
            return None
        x = other_input(first, a[0])
        a_val, b_val = self.const(a[0]), self.const(b)
        if not (is_float(a_val) and is_float(b_val)) or a_val.dtype != b_val.dtype or self.const(x) is not None:
            return None
        return x, a_val, b_val

    def check(self, first, second):
        return self._parts(first, second) is not None

    def rewrite(self, first, second):
        x, a_val, b_val = self._parts(first, second)
        combined = self.combine(a_val.astype(np.float64), b_val.astype(np.float64)).astype(a_val.dtype)
        second.inputs.clear()
        second.inputs.extend([x, self.new_const(f"{second.name}_constant", combined)])
        remove(first)


class MergeAdds(_MergeConstantChain):
    """(x + a) + b -> x + (a + b)."""

    pattern = ("Add", "Add")

    @staticmethod
    def combine(a, b):
        return a + b


class MergeMuls(_MergeConstantChain):
    """(x * a) * b -> x * (a * b)."""

    pattern = ("Mul", "Mul")

    @staticmethod
    def combine(a, b):
        return a * b


ELEMENTWISE_RULES = (DivByConstantToMul, MergeAdds, MergeMuls)


@register_pass
class SimplifyArithmetic(RulePass):
    """Div by a constant to Mul; merge consecutive constant Adds and Muls."""

    name = "simplify-arithmetic"
    description = "Div by constant to Mul by reciprocal; (x+a)+b and (x*a)*b with constants merged"
    rules = ELEMENTWISE_RULES
