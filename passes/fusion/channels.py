"""Per-output-channel arithmetic folded into Conv and ConvTranspose weights.

`y = conv(x) * scale + shift` with scale and shift constant per output channel equals a conv
with filters scaled by `scale` and bias `b * scale + shift`: exact in real arithmetic. Folding is
done in float64 and rounded once to the weight's dtype.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.ops import CONV
from onnxopt.passes.fusion.rules import Rule, is_float, present


def conv_weight(rule: Rule, conv: gs.Node) -> np.ndarray | None:
    """The filters of a conv we may rewrite: constant, float, used by this node alone."""
    if conv.op not in CONV or len(conv.inputs) < 2 or len(conv.outputs) != 1:
        return None
    weight = rule.const(conv.inputs[1], exclusive=True)
    if not is_float(weight) or weight.ndim < 3:
        return None
    if len(conv.inputs) > 2 and present(conv.inputs[2]) and not is_float(rule.const(conv.inputs[2])):
        return None
    return weight


def out_channels(conv: gs.Node, weight: np.ndarray) -> int:
    if conv.op == "Conv":
        return int(weight.shape[0])
    return int(weight.shape[1]) * int(conv.attrs.get("group", 1))


def conv_rank(weight: np.ndarray) -> int:
    """Rank of the conv's output: N, C and one axis per kernel dim."""
    return weight.ndim


def per_channel(values: np.ndarray | None, rank: int, channels: int) -> np.ndarray | None:
    """A constant that, broadcast against an (N, C, ...) tensor, varies only along C and does not
    grow the result; returned as a (C,) vector, else None."""
    if values is None or values.ndim > rank:
        return None
    shape = (1,) * (rank - values.ndim) + tuple(values.shape)
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(values.reshape(-1).astype(np.float64), (channels,)) if shape[1] == channels else np.full(
        channels, float(values.reshape(-1)[0])
    )


def fold_affine(rule: Rule, conv: gs.Node, scale: np.ndarray | None, shift: np.ndarray | None) -> None:
    """Make `conv` compute conv(x) * scale + shift (per output channel), with new constants."""
    weight = rule.const(conv.inputs[1])
    channels = out_channels(conv, weight)
    has_bias = len(conv.inputs) > 2 and present(conv.inputs[2])
    bias = rule.const(conv.inputs[2]).astype(np.float64) if has_bias else np.zeros(channels)
    new_weight = weight.astype(np.float64)
    if scale is not None:
        if conv.op == "Conv":
            new_weight = new_weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        else:
            group = int(conv.attrs.get("group", 1))
            grouped = new_weight.reshape((group, weight.shape[0] // group) + weight.shape[1:])
            new_weight = (grouped * scale.reshape((group, 1, channels // group) + (1,) * (weight.ndim - 2))).reshape(weight.shape)
        bias = bias * scale
    if shift is not None:
        bias = bias + shift
    dtype = weight.dtype
    inputs = [conv.inputs[0], rule.new_const(conv.inputs[1].name, new_weight.astype(dtype)), rule.new_const(
        conv.inputs[2].name if has_bias else f"{conv.name}_bias", bias.astype(dtype))]
    conv.inputs.clear()
    conv.inputs.extend(inputs)
