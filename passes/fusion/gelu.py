"""Decomposed GELU chains fused into one Gelu op.

    erf form:  0.5 * x * (1 + Erf(x / sqrt(2)))                       (x / sqrt 2 may be x * 0.7071)
    tanh form: 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))

in any of the usual groupings of the two Muls. The op emitted depends on where the model goes:
the standard Gelu (opset 20, `approximate` none/tanh) when the model is at opset 20; for ONNX
Runtime targets below that, the com.microsoft Gelu / FastGelu contrib ops, which compute the same
formulas (no opset change needed); for other targets the opset is raised to 20 when safe.
Refused when a constant differs from the formula, an intermediate is used elsewhere or is a graph
output, or (contrib ops) x is not float32.
"""

from __future__ import annotations

import math

import numpy as np

from onnxopt.passes.fusion.rules import Rule, RulePass, other_input, scalar_of
from onnxopt.pipeline import register_pass

GELU_OPSET = 20
SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715


def close(value: float | None, want: float, rtol: float = 1e-5) -> bool:
    return value is not None and abs(value - want) <= rtol * abs(want)


def may_use_contrib_ops(ctx) -> bool:
    """The target's runtime runs ONNX Runtime's com.microsoft ops (a capability, not a name)."""
    return ctx.target.contrib_ops


class _FuseGelu(Rule):
    """Shared tail: activation -> Add(1) -> the two Muls by x and 0.5, in any grouping."""

    approximate = "none"
    contrib_op = "Gelu"

    def required_opset(self) -> int:
        return 0 if may_use_contrib_ops(self.ctx) else GELU_OPSET

    def scalar(self, node, tensor) -> float | None:
        return scalar_of(self.const(other_input(node, tensor)))

    def tail(self, act, x):
        """The nodes after the activation up to the Gelu output, or None."""
        add = self.sole_consumer(act.outputs[0])
        if add is None or add.op != "Add" or not close(self.scalar(add, act.outputs[0]), 1.0):
            return None
        m1 = self.sole_consumer(add.outputs[0])
        if m1 is None or m1.op != "Mul":
            return None
        other = other_input(m1, add.outputs[0])
        if other is x or close(scalar_of(self.const(other)), 0.5):
            want = 0.5 if other is x else None
            m2 = self.sole_consumer(m1.outputs[0])
            if m2 is None or m2.op != "Mul":
                return None
            last = other_input(m2, m1.outputs[0])
            if (want is not None and not close(scalar_of(self.const(last)), 0.5)) or (want is None and last is not x):
                return None
            return [add, m1, m2], []
        half = other.inputs[0] if len(other.inputs) == 1 else None
        if half is None or half.op != "Mul" or self.sole_consumer(other) is not m1:
            return None
        if other_input(half, x) is None or not close(self.scalar(half, x), 0.5):
            return None
        return [add, m1], [half]

    def check(self, x, *nodes):
        if self.opset >= GELU_OPSET:
            return True
        return may_use_contrib_ops(self.ctx) and x.dtype is not None and np.dtype(x.dtype) == np.float32

    def rewrite(self, x, *nodes):
        if self.opset >= GELU_OPSET:
            self.replace(nodes, "Gelu", [x], {"approximate": self.approximate})
        else:
            self.replace(nodes, self.contrib_op, [x], domain="com.microsoft")


class FuseErfGelu(_FuseGelu):
    """x / sqrt(2) -> Erf -> Add 1 -> Mul x -> Mul 0.5 (any grouping) -> Gelu."""

    pattern = ("Erf",)

    def match(self, erf):
        scaled = erf.inputs[0]
        pre = scaled.inputs[0] if len(scaled.inputs) == 1 else None
        if pre is None or pre.op not in ("Div", "Mul") or self.sole_consumer(scaled) is not erf:
            return None
        x, c = pre.inputs[0], scalar_of(self.const(pre.inputs[1]))
        if pre.op == "Mul" and c is None:
            x, c = pre.inputs[1], scalar_of(self.const(pre.inputs[0]))
        if self.const(x) is not None or not (close(c, SQRT2) if pre.op == "Div" else close(c, 1 / SQRT2)):
            return None
        found = self.tail(erf, x)
        if found is None:
            return None
        after, before = found
        return [x, *before, pre, erf, *after]


class FuseTanhGelu(_FuseGelu):
    """sqrt(2/pi) * (x + 0.044715 x^3) -> Tanh -> Add 1 -> Mul x -> Mul 0.5 -> Gelu(tanh) / FastGelu."""

    pattern = ("Tanh",)
    approximate = "tanh"
    contrib_op = "FastGelu"

    def _producer(self, tensor, op, consumer):
        node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        return node if node is not None and node.op == op and self.sole_consumer(tensor) is consumer else None

    def match(self, tanh):
        scale = self._producer(tanh.inputs[0], "Mul", tanh)
        if scale is None:
            return None
        inner = next((t for t in scale.inputs if self.const(t) is None), None)
        if inner is None or not close(self.scalar(scale, inner), SQRT_2_OVER_PI):
            return None
        add = self._producer(inner, "Add", scale)
        if add is None:
            return None
        for x, cubic_term in (add.inputs, add.inputs[::-1]):
            cubic = self._producer(cubic_term, "Mul", add)
            if cubic is None or self.const(x) is not None:
                continue
            cube_t = next((t for t in cubic.inputs if self.const(t) is None), None)
            if cube_t is None or not close(self.scalar(cubic, cube_t), TANH_CUBIC):
                continue
            cube_nodes = self._cube(cube_t, x, cubic)
            if cube_nodes is None:
                continue
            found = self.tail(tanh, x)
            if found is None:
                return None
            after, before = found
            return [x, *before, *cube_nodes, cubic, add, scale, tanh, *after]
        return None

    def _cube(self, tensor, x, consumer):
        pow_node = self._producer(tensor, "Pow", consumer)
        if pow_node is not None:
            return [pow_node] if pow_node.inputs[0] is x and scalar_of(self.const(pow_node.inputs[1])) == 3.0 else None
        outer = self._producer(tensor, "Mul", consumer)
        if outer is None:
            return None
        square_t = other_input(outer, x)
        square = self._producer(square_t, "Mul", outer) if square_t is not None else None
        if square is None or square.inputs[0] is not x or square.inputs[1] is not x:
            return None
        return [square, outer]


GELU_RULES = (FuseErfGelu, FuseTanhGelu)


@register_pass
class FuseGelu(RulePass):
    """Fuse erf and tanh GELU chains into Gelu (opset 20) or the ORT contrib Gelu/FastGelu."""

    name = "fuse-gelu"
    description = "fuse erf/tanh GELU chains into Gelu (opset 20) or com.microsoft Gelu/FastGelu for ORT targets"
    rules = GELU_RULES
