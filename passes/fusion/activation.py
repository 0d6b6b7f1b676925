"""Decomposed HardSwish fused into the standard HardSwish op (opset 14).

MobileNetV3-style exports (PaddleOCR, torch at opset < 14) write hard-swish as
`x * Clip(x + 3, 0, 6) / 6` (the /6 may be a Mul by 1/6, before or after the Mul by x), or as
`x * HardSigmoid(x)` with alpha 1/6 and beta 0.5. HardSwish(x) = x * max(0, min(1, x/6 + 1/2)) is
the same function. ONNX Runtime does not fuse this chain itself (measured: its optimized graph
keeps Add, Clip, Mul, Mul), so the fusion saves three kernels per activation. The opset is raised
to 14 first when safe; refused when constants differ or an intermediate is used elsewhere.
"""

from __future__ import annotations

from onnxopt.passes.fusion.gelu import close
from onnxopt.passes.fusion.rules import Rule, RulePass, other_input, present, scalar_of
from onnxopt.pipeline import register_pass

HARDSWISH_OPSET = 14


def clip_bounds(rule: Rule, clip) -> tuple[float | None, float | None]:
    if "min" in clip.attrs or "max" in clip.attrs:  # opset < 11
        return float(clip.attrs.get("min", float("-inf"))), float(clip.attrs.get("max", float("inf")))
    low = scalar_of(rule.const(clip.inputs[1])) if len(clip.inputs) > 1 and present(clip.inputs[1]) else None
    high = scalar_of(rule.const(clip.inputs[2])) if len(clip.inputs) > 2 and present(clip.inputs[2]) else None
    return low, high


class FuseHardSwish(Rule):
    """x + 3 -> Clip(0, 6) -> (* x, / 6 in either order) -> HardSwish(x)."""

    pattern = ("Add",)
    min_opset = HARDSWISH_OPSET

    def _scale_by_sixth(self, node, tensor) -> bool:
        value = scalar_of(self.const(other_input(node, tensor)))
        if node.op == "Div":
            return node.inputs[0] is tensor and close(value, 6.0)
        return node.op == "Mul" and close(value, 1 / 6)

    def match(self, add):
        x = next((t for t in add.inputs if self.const(t) is None), None)
        if x is None or not close(scalar_of(self.const(other_input(add, x))), 3.0):
            return None
        clip = self.sole_consumer(add.outputs[0])
        if clip is None or clip.op != "Clip" or clip_bounds(self, clip) != (0.0, 6.0):
            return None
        first = self.sole_consumer(clip.outputs[0])
        if first is None:
            return None
        second = self.sole_consumer(first.outputs[0])
        if second is None:
            return None
        if first.op == "Mul" and other_input(first, clip.outputs[0]) is x and self._scale_by_sixth(second, first.outputs[0]):
            return [x, add, clip, first, second]
        if self._scale_by_sixth(first, clip.outputs[0]) and second.op == "Mul" and other_input(second, first.outputs[0]) is x:
            return [x, add, clip, first, second]
        return None

    def check(self, x, *nodes):
        return True

    def rewrite(self, x, *nodes):
        self.replace(nodes, "HardSwish", [x])


class FuseHardSigmoidMul(Rule):
    """x * HardSigmoid(x; alpha=1/6, beta=0.5) -> HardSwish(x)."""

    pattern = ("HardSigmoid", "Mul")
    min_opset = HARDSWISH_OPSET

    def check(self, hsig, mul):
        alpha, beta = float(hsig.attrs.get("alpha", 0.2)), float(hsig.attrs.get("beta", 0.5))
        return close(alpha, 1 / 6) and close(beta, 0.5) and other_input(mul, hsig.outputs[0]) is hsig.inputs[0]

    def rewrite(self, hsig, mul):
        self.replace([hsig, mul], "HardSwish", [hsig.inputs[0]])


ACTIVATION_RULES = (FuseHardSwish, FuseHardSigmoidMul)


@register_pass
class FuseActivations(RulePass):
    """Fuse decomposed HardSwish chains into HardSwish (raising the opset to 14 when safe)."""

    name = "fuse-activations"
    description = "fuse x*Clip(x+3,0,6)/6 and x*HardSigmoid(x) into HardSwish (opset 14)"
    rules = ACTIVATION_RULES
