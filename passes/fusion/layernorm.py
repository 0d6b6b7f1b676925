"""The decomposed layer norm chain fused into one LayerNormalization (opset 17).

Exporters at opset < 17 write LayerNorm as

    m = ReduceMean(x, axes); d = x - m; v = ReduceMean(d ** 2, axes)   (or d * d)
    n = d / Sqrt(v + eps); y = n * gamma + beta                        (gamma, beta optional)

which is LayerNormalization(x, gamma, beta, axis, epsilon) when the axes are a contiguous
suffix of x's dims and gamma/beta are constants that broadcast over the normalized dims only.
Every intermediate must be used by the chain alone (d by exactly its Pow and Div) and be no graph
output. The model's opset is raised to 17 first when that is safe (see opset.py).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.passes.fusion.rules import Rule, RulePass, is_float, other_input, scalar_of
from onnxopt.pipeline import register_pass

LAYERNORM_OPSET = 17


def reduce_axes(rule: Rule, node: gs.Node) -> list[int] | None:
    if node.attrs.get("keepdims", 1) != 1:
        return None
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        values = rule.const(node.inputs[1])
        return None if values is None else [int(a) for a in values.reshape(-1)]
    return None  # all axes: not a layer norm over a suffix


def suffix_axis(axes: list[int], rank: int | None) -> int | None:
    """The LayerNormalization axis when `axes` are the last len(axes) dims, else None."""
    if rank is not None:
        axes = [a - rank if a >= 0 else a for a in axes]
    axes = sorted(axes)
    k = len(axes)
    return -k if k and axes == list(range(-k, 0)) else None


class FuseLayerNorm(Rule):
    """ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div[, Mul gamma][, Add beta] -> LayerNormalization."""

    pattern = ("ReduceMean",)
    min_opset = LAYERNORM_OPSET

    def match(self, mean):
        x = mean.inputs[0]
        sub = self.sole_consumer(mean.outputs[0])
        if sub is None or sub.op != "Sub" or sub.inputs[0] is not x or sub.inputs[1] is not mean.outputs[0]:
            return None
        d = sub.outputs[0]
        users = self.local_consumers(d)
        if users is None or len(users) != 3 - (1 if any(u.op == "Pow" for u in users) else 0) or self.is_output(d):
            return None
        square = next((u for u in users if u.op == "Pow" or (u.op == "Mul" and u.inputs[0] is d and u.inputs[1] is d)), None)
        div = next((u for u in users if u.op == "Div" and u.inputs[0] is d), None)
        if square is None or div is None:
            return None
        if square.op == "Pow" and (square.inputs[0] is not d or scalar_of(self.const(square.inputs[1])) != 2.0):
            return None
        chain = [square]
        for op in ("ReduceMean", "Add", "Sqrt"):
            nxt = self.sole_consumer(chain[-1].outputs[0])
            if nxt is None or nxt.op != op:
                return None
            chain.append(nxt)
        var_mean, add_eps, sqrt = chain[1:]
        if div.inputs[1] is not sqrt.outputs[0]:
            return None
        mul = add = None
        nxt = self.sole_consumer(div.outputs[0])
        if nxt is not None and nxt.op == "Mul" and self.const(other_input(nxt, div.outputs[0])) is not None:
            mul, nxt = nxt, self.sole_consumer(nxt.outputs[0])
        tail = (mul or div).outputs[0]
        if nxt is not None and nxt.op == "Add" and self.const(other_input(nxt, tail)) is not None:
            add = nxt
        return [mean, sub, square, var_mean, add_eps, sqrt, div, mul, add]

    def _params(self, mean, sub, square, var_mean, add_eps, sqrt, div, mul=None, add=None):
        x = mean.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        axes, var_axes = reduce_axes(self, mean), reduce_axes(self, var_mean)
        if axes is None or var_axes != axes:
            return None
        axis = suffix_axis(axes, rank)
        eps = scalar_of(self.const(other_input(add_eps, var_mean.outputs[0])))
        if axis is None or eps is None or eps < 0:
            return None
        gamma = self.const(other_input(mul, div.outputs[0])) if mul is not None else None
        beta = self.const(other_input(add, mul.outputs[0] if mul is not None else div.outputs[0])) if add is not None else None
        norm_shape = self._norm_shape(x, axis, gamma, beta)
        if norm_shape is None:
            return None
        dtype = np.dtype(x.dtype) if x.dtype is not None else (gamma.dtype if gamma is not None else None)
        if dtype is None or dtype.kind != "f":
            return None
        scale = np.broadcast_to(gamma, norm_shape) if gamma is not None else np.ones(norm_shape, dtype)
        bias = np.broadcast_to(beta, norm_shape) if beta is not None else None
        return axis, eps, scale.astype(dtype), None if bias is None else bias.astype(dtype)

    def _norm_shape(self, x, axis, gamma, beta):
        """The normalized dims, when known, with gamma and beta broadcasting over them alone."""
        k = -axis
        dims = list(x.shape)[-k:] if x.shape is not None and len(x.shape) >= k else [None] * k
        for values in (gamma, beta):
            if values is None:
                continue
            rank = len(x.shape) if x.shape is not None else k
            if not is_float(values) or values.ndim > rank:
                return None
            lead, tail = values.shape[: max(values.ndim - k, 0)], values.shape[max(values.ndim - k, 0):]
            if any(d != 1 for d in lead):
                return None
            tail = (1,) * (k - len(tail)) + tuple(tail)
            for i, d in enumerate(tail):
                if d == 1:
                    continue
                if isinstance(dims[i], (int, np.integer)) and dims[i] != d:
                    return None
                dims[i] = d
        if not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
            return None
        return tuple(int(d) for d in dims)

    def check(self, *nodes):
        return self._params(*nodes) is not None

    def rewrite(self, *nodes):
        axis, eps, scale, bias = self._params(*nodes)
        x = nodes[0].inputs[0]
        base = nodes[0].name or "layernorm"
        inputs = [x, self.new_const(f"{base}_scale", scale)]
        if bias is not None:
            inputs.append(self.new_const(f"{base}_bias", bias))
        self.replace([n for n in nodes if n is not None], "LayerNormalization", inputs, {"axis": axis, "epsilon": float(eps)})


LAYERNORM_RULES = (FuseLayerNorm,)


@register_pass
class FuseLayerNormalization(RulePass):
    """Fuse decomposed LayerNorm chains into LayerNormalization (raising the opset to 17 when safe)."""

    name = "fuse-layernorm"
    description = "fuse the ReduceMean/Sub/Pow/.../Add chain into LayerNormalization (opset 17)"
    rules = LAYERNORM_RULES
