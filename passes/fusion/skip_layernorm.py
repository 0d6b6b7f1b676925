"""Residual Add + LayerNormalization fused into ONNX Runtime's SkipLayerNormalization, where ORT
runs that faster.

`LayerNormalization(a + b)` over the last axis is com.microsoft SkipLayerNormalization(a, b,
gamma, beta); its fourth output is `a + b` itself, so other readers of the sum (pre-LN
transformers) keep it. ONNX Runtime targets only: the op is a contrib op. Refused unless a and b
are non-constant rank-3 tensors of the same known shape, the norm is over the last axis with 1-D
constant gamma/beta, and the LayerNormalization's mean/inv-std outputs are unused. Where the fused
kernel measures slower on this machine (residual_norm.py), the Add becomes a Sum instead, which
ORT's own load-time fusion leaves alone.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.passes.fusion.gelu import may_use_contrib_ops
from onnxopt.passes.fusion.residual_norm import skip_layernorm_is_faster
from onnxopt.passes.fusion.rules import NEVER, Rule, RulePass, is_float, present, remove
from onnxopt.pipeline import register_pass


def same_shape(a: gs.Tensor, b: gs.Tensor) -> bool:
    """Equal ranks and dims, symbolic dims equal by name; unknown dims never equal."""
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    return all(x == y and x is not None and x != "" and not (isinstance(x, int) and x < 0) for x, y in zip(a.shape, b.shape))


class FuseSkipLayerNorm(Rule):
    """Add(a, b) -> LayerNormalization(axis=-1) -> SkipLayerNormalization(a, b, gamma, beta)."""

    pattern = ("Add",)

    def required_opset(self) -> int:
        return NEVER if not may_use_contrib_ops(self.ctx) else 0

    def match(self, add):
        if add.op != "Add":
            return None
        users = self.local_consumers(add.outputs[0])
        if not users:
            return None
        norms = [u for u in users if u.op == "LayerNormalization" and u.inputs[0] is add.outputs[0]]
        if len(norms) != 1:
            return None
        return [add, norms[0]]

    def check(self, add, norm):
        a, b = add.inputs
        if len(add.inputs) != 2 or self.const(a) is not None or self.const(b) is not None or not same_shape(a, b) or len(a.shape) != 3:
            return False
        if a.dtype is None or np.dtype(a.dtype) != np.float32:
            return False
        if any(out.outputs or self.is_output(out) for out in norm.outputs[1:]):
            return False
        axis = int(norm.attrs.get("axis", -1))
        if axis not in (-1, 2):
            return False
        gamma = self.const(norm.inputs[1])
        beta = self.const(norm.inputs[2]) if len(norm.inputs) > 2 and present(norm.inputs[2]) else None
        hidden = a.shape[-1]
        ok = lambda v: is_float(v) and v.ndim == 1 and (not isinstance(hidden, int) or v.shape[0] == hidden)  # noqa: E731
        return ok(gamma) and (beta is None or ok(beta))

    def rewrite(self, add, norm):
        hidden = add.inputs[0].shape[-1]
        if isinstance(hidden, int) and not skip_layernorm_is_faster(hidden):
            add.op = "Sum"  # same arithmetic; ORT fuses Add -> LayerNormalization into its slower kernel, not Sum
            add.name = f"{add.name}_residual_sum"
            return
        a, b = add.inputs
        total = add.outputs[0]
        inputs = [a, b, norm.inputs[1]] + ([norm.inputs[2]] if len(norm.inputs) > 2 and present(norm.inputs[2]) else [])
        out = norm.outputs[0]
        eps = float(norm.attrs.get("epsilon", 1e-5))
        remove(norm)
        remove(add)
        outputs = [out]
        if total.outputs or self.is_output(total):
            outputs += [gs.Variable.empty(), gs.Variable.empty(), total]
        self.add_node("SkipLayerNormalization", inputs, outputs, {"epsilon": eps}, domain="com.microsoft", name=norm.name)


SKIP_LAYERNORM_RULES = (FuseSkipLayerNorm,)


@register_pass
class FuseSkipLayerNormalization(RulePass):
    """Fuse Add + LayerNormalization into com.microsoft SkipLayerNormalization (ORT targets only)."""

    name = "fuse-skip-layernorm"
    description = "fuse residual Add + LayerNormalization into com.microsoft SkipLayerNormalization (ORT targets)"
    rules = SKIP_LAYERNORM_RULES
