"""Nodes that return their input unchanged, removed.

Exporters leave casts to the type a tensor already has, Slices over the whole range, Expands and
Reshapes to the shape a tensor already has, zero Pads, one-input Concats, identity Transposes,
and arithmetic with a neutral constant (x*1, x/1, x+0, x-0). Each is removed only when it
provably changes neither values nor shape: a neutral constant must not broadcast its input to a
bigger shape, so the input's rank must be known unless the constant is a scalar.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.graphs import rank_of
from onnxopt.passes.fusion.layout import perm_of
from onnxopt.passes.fusion.rules import Rule, RulePass, present, static_shape
from onnxopt.pipeline import register_pass

INT64_MAX = np.iinfo(np.int64).max
END_OF_AXIS = np.iinfo(np.int32).max  # exporters write INT_MAX or INT64_MAX for "to the end"


class _RemoveNoop(Rule):
    """A single node that is a no-op when `is_noop` says so."""

    data_input = 0

    def is_noop(self, node) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, node):
        return (
            len(node.outputs) == 1 and len(node.inputs) > self.data_input
            and self.is_noop(node) and self.can_merge(node.inputs[self.data_input], node.outputs[0])
        )

    def rewrite(self, node):
        self.bypass(node, node.inputs[self.data_input])


class RemoveSameTypeCast(_RemoveNoop):
    """Cast to the dtype the tensor already has."""

    pattern = ("Cast",)

    def is_noop(self, node):
        dtype = node.inputs[0].dtype
        if dtype is None or "to" not in node.attrs:
            return False
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))) == np.dtype(dtype)
        except (TypeError, KeyError, ValueError):
            return False


class RemoveFullSlice(_RemoveNoop):
    """Slice from 0 to the end of every axis it names, with step 1."""

    pattern = ("Slice",)

    def is_noop(self, node):
        if "starts" in node.attrs:  # opset < 10
            starts, ends = node.attrs["starts"], node.attrs["ends"]
            steps = [1] * len(starts)
            axes = node.attrs.get("axes", list(range(len(starts))))
        else:
            values = [self.const(t) if present(t) else None for t in node.inputs[1:5]]
            if len(values) < 2 or values[0] is None or values[1] is None:
                return False
            starts, ends = values[0].reshape(-1).tolist(), values[1].reshape(-1).tolist()
            if len(values) > 2 and present(node.inputs[3]) and values[2] is None:
                return False
            if len(values) > 3 and present(node.inputs[4]) and values[3] is None:
                return False
            axes = values[2].reshape(-1).tolist() if len(values) > 2 and values[2] is not None else list(range(len(starts)))
            steps = values[3].reshape(-1).tolist() if len(values) > 3 and values[3] is not None else [1] * len(starts)
        shape = node.inputs[0].shape
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step != 1 or start != 0:
                return False
            dim = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
            if end < END_OF_AXIS and not (isinstance(dim, (int, np.integer)) and end >= dim):
                return False
        return True


class RemoveNoopExpand(_RemoveNoop):
    """Expand to a shape that does not grow the input (all ones, or its own static dims)."""

    pattern = ("Expand",)

    def is_noop(self, node):
        target = self.const(node.inputs[1])
        shape = node.inputs[0].shape
        if target is None or shape is None or target.size > len(shape):
            return False
        own = list(shape)[len(shape) - target.size:]
        return all(int(t) == 1 or (isinstance(d, (int, np.integer)) and int(t) == d) for t, d in zip(target.reshape(-1), own))


class RemoveZeroPad(_RemoveNoop):
    """Pad by zero on every side (any mode)."""

    pattern = ("Pad",)

    def is_noop(self, node):
        if "pads" in node.attrs:
            return not any(node.attrs["pads"])
        if len(node.inputs) < 2 or len(node.inputs) > 3 and present(node.inputs[3]):
            return False
        pads = self.const(node.inputs[1])
        return pads is not None and not np.any(pads)


class RemoveSingleConcat(_RemoveNoop):
    """Concat of one tensor."""

    pattern = ("Concat",)

    def is_noop(self, node):
        return len(node.inputs) == 1


class RemoveIdentityTranspose(_RemoveNoop):
    """Transpose by the identity permutation."""

    pattern = ("Transpose",)

    def is_noop(self, node):
        perm = perm_of(node)
        return perm is not None and perm == sorted(perm)


class RemoveSameShapeReshape(_RemoveNoop):
    """Reshape/Flatten/Squeeze/Unsqueeze whose static output shape equals its static input shape."""

    pattern = ("Reshape",)

    def is_noop(self, node):
        before, after = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        return before is not None and before == after


class _RemoveNeutral(_RemoveNoop):
    """x op c with c all `neutral` and not broadcasting x to a bigger shape."""

    neutral = 0.0
    commutes = True

    def _data_index(self, node):
        for index in (0, 1) if self.commutes else (0,):
            values = self.const(node.inputs[1 - index])
            if values is None or not np.all(values == self.neutral):
                continue
            x = node.inputs[index]
            if x.dtype is not None and np.dtype(x.dtype) != values.dtype:
                continue
            rank = rank_of(x)
            if values.ndim == 0 and values.size == 1:
                return index
            if rank is None or values.ndim > rank:
                continue
            dims = list(x.shape)[rank - values.ndim:] if x.shape is not None else [None] * values.ndim
            if all(c == 1 or (isinstance(d, (int, np.integer)) and c == d) for c, d in zip(values.shape, dims)):
                return index
        return None

    def is_noop(self, node):
        if len(node.inputs) != 2:
            return False
        index = self._data_index(node)
        return index is not None and self.can_merge(node.inputs[index], node.outputs[0])

    def check(self, node):
        return len(node.outputs) == 1 and self.is_noop(node)

    def rewrite(self, node):
        self.bypass(node, node.inputs[self._data_index(node)])


class RemoveMulByOne(_RemoveNeutral):
    """x * 1."""

    pattern = ("Mul",)
    neutral = 1.0


class RemoveDivByOne(_RemoveNeutral):
    """x / 1."""

    pattern = ("Div",)
    neutral = 1.0
    commutes = False


class RemoveAddZero(_RemoveNeutral):
    """x + 0."""

    pattern = ("Add",)


class RemoveSubZero(_RemoveNeutral):
    """x - 0."""

    pattern = ("Sub",)
    commutes = False


class RemoveSameShapeFlatten(RemoveSameShapeReshape):
    pattern = ("Flatten",)


class RemoveSameShapeSqueeze(RemoveSameShapeReshape):
    pattern = ("Squeeze",)


class RemoveSameShapeUnsqueeze(RemoveSameShapeReshape):
    pattern = ("Unsqueeze",)


NOOP_RULES = (
    RemoveSameTypeCast, RemoveFullSlice, RemoveNoopExpand, RemoveZeroPad, RemoveSingleConcat, RemoveIdentityTranspose,
    RemoveSameShapeReshape, RemoveSameShapeFlatten, RemoveSameShapeSqueeze, RemoveSameShapeUnsqueeze,
    RemoveMulByOne, RemoveDivByOne, RemoveAddZero, RemoveSubZero,
)


@register_pass
class RemoveNoops(RulePass):
    """Remove nodes that provably return their input unchanged."""

    name = "remove-noops"
    description = "remove no-op Cast/Slice/Expand/Pad/Concat/Transpose/Reshape and x*1, x/1, x+0, x-0"
    rules = NOOP_RULES
