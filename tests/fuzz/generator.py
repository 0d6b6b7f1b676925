"""A hypothesis strategy for random valid ONNX models, for differential testing of exact passes.

The generator keeps a pool of tensors whose dtype and shape it tracks, and grows the graph one op at
a time from ops whose constraints it can satisfy: elementwise unary and binary ops with
broadcasting, Conv/BatchNormalization/pooling, MatMul/Gemm, Reshape/Transpose/Concat/Split/Slice/
Gather/Squeeze/Unsqueeze/Flatten/Expand/Tile, reductions, Softmax/LayerNormalization, Cast, Where,
shape sub-graphs (Shape with start/end), Constant nodes, shared and duplicated initializers,
Identity/Dropout, dead branches and If subgraphs that read outer-scope tensors; sequences
(SequenceConstruct/SequenceAt/ConcatFromSequence) and optional values, also inside If branches;
float16/bfloat16 weights, zero-size intermediate tensors, graph outputs that are graph inputs or
initializers, and one value under two output names. `old_opset_models` draws models at opset 6,
which onnxopt upgrades on load (what ONNX's node tests showed).

Inputs may have a symbolic batch dim "N" on axis 0. Such a "batched" tensor keeps N on axis 0 through
every op the generator applies to it (no op moves, slices or concatenates the batch axis), so the
model is valid for any N and tests can run it at N=1 and N=3.

Only ops whose outputs are continuous in their inputs are applied to computed values: a pass that
reorders float arithmetic may move a value by an ulp, which must not flip a Floor or a comparison.
Comparisons read graph inputs directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

N = "N"  # the symbolic batch dim
BATCH_VALUES = (1, 3)  # the values tests run N at

FLOAT_UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Softplus", "Softsign", "Erf", "Sin", "Cos", "Elu", "Selu", "LeakyRelu", "HardSigmoid", "Exp"]
FLOAT_BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


@dataclass
class Value:
    name: str
    dtype: np.dtype
    shape: tuple  # ints, and N on axis 0 for batched tensors
    const: np.ndarray | None = None  # initializer / Constant value when known
    is_input: bool = False

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batched(self) -> bool:
        return bool(self.shape) and self.shape[0] == N

    @property
    def is_float(self) -> bool:
        return self.dtype == np.float32


def _volume(shape) -> int:
    return int(np.prod([3 if d == N else d for d in shape], dtype=np.int64))


def _broadcast(a: tuple, b: tuple) -> tuple | None:
    """Numpy broadcasting with N as a symbol that broadcasts only with 1 and N."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            return None
    return tuple(reversed(out))


def _onnx_dims(shape: tuple) -> list:
    return [N if d == N else int(d) for d in shape]


ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64, np.dtype(bool): TensorProto.BOOL, np.dtype(np.float16): TensorProto.FLOAT16}


@dataclass
class Builder:
    draw: callable
    rng: np.random.Generator
    opset: int
    nodes: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    pool: list = field(default_factory=list)
    consts: list = field(default_factory=list)
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def node(self, op: str, inputs: list, n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        outs = [self.fresh(op.lower() + "_") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh("n_"), **attrs))
        return outs

    def add(self, value: Value) -> Value:
        self.pool.append(value)
        return value

    # -- constants: initializers, Constant nodes, shared and duplicated ones
    def constant(self, array: np.ndarray, any_values: bool = False) -> str:
        """An initializer or Constant node; `any_values`: another weight of the same shape may stand in."""
        array = np.asarray(array)
        choice = self.draw(st.sampled_from(["init", "init", "constant_node", "duplicate", "shared"]))
        if choice == "shared":
            for v in self.consts:
                same_kind = v.const.dtype == array.dtype and v.const.shape == array.shape
                if same_kind and (any_values or np.array_equal(v.const, array)):
                    return v.name  # the same initializer read by a second node
        if choice == "constant_node":
            name = self.node("Constant", [], value=numpy_helper.from_array(array))[0]
        else:
            name = self.fresh("w_")
            self.initializers.append(numpy_helper.from_array(array, name))
            if choice == "duplicate":  # the same bytes stored twice under another name
                self.initializers.append(numpy_helper.from_array(array.copy(), self.fresh("dup_")))
        self.consts.append(Value(name, array.dtype, array.shape, const=array))
        return name

    def weights(self, shape, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def weight(self, shape) -> str:
        """A random weight constant (maybe shared with an earlier one of the same shape)."""
        return self.constant(self.weights(shape), any_values=True)

    def pick(self, predicate=lambda v: True) -> Value | None:
        candidates = [v for v in self.pool if predicate(v)]
        if not candidates:
            return None
        # prefer recent tensors so graphs grow deep rather than wide
        index = self.draw(st.integers(0, len(candidates) - 1))
        return candidates[len(candidates) - 1 - index]

    def int_const(self, values) -> str:
        return self.constant(np.asarray(values, dtype=np.int64))


# -- op builders: each returns True when it added something


def op_unary(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float)
    if x is None:
        return False
    op = b.draw(st.sampled_from(FLOAT_UNARY))
    if op == "Exp":
        x = b.add(Value(b.node("Tanh", [x.name])[0], x.dtype, x.shape))  # keeps Exp finite
    attrs = {"alpha": 0.1} if op == "LeakyRelu" else {}
    b.add(Value(b.node(op, [x.name], **attrs)[0], x.dtype, x.shape))
    return True


def _broadcastable_shape(b: Builder, shape: tuple) -> tuple:
    """A constant shape that broadcasts with `shape` and does not change it."""
    drop = b.draw(st.integers(0, len(shape)))
    tail = list(shape[drop:])
    return tuple(1 if d == N or b.draw(st.booleans()) else d for d in tail)


def op_binary(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float)
    if x is None:
        return False
    op = b.draw(st.sampled_from(FLOAT_BINARY + ["Div"]))
    other = None
    if op != "Div":
        other = b.pick(lambda v: v.is_float and _broadcast(x.shape, v.shape) is not None and _volume(_broadcast(x.shape, v.shape)) <= 4096)
    if other is None or b.draw(st.booleans()):
        value = b.weights(_broadcastable_shape(b, x.shape))
        if op == "Div":
            value = np.sign(value + 1e-3) * (np.abs(value) + 0.5)  # away from zero
        name, shape_out = b.constant(value.astype(np.float32), any_values=op != "Div"), x.shape
    else:
        name, shape_out = other.name, _broadcast(x.shape, other.shape)
    operands = [x.name, name]
    if op != "Div" and b.draw(st.booleans()):
        operands.reverse()
    b.add(Value(b.node(op, operands)[0], np.dtype(np.float32), shape_out))
    return True


def op_conv(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float and v.rank == 4 and all(d != N and d >= 3 for d in v.shape[2:]) and v.shape[1] != N)
    if x is None:
        return False
    c = x.shape[1]
    group = b.draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
    m = group * b.draw(st.integers(1, 3))
    k = b.draw(st.sampled_from([1, 3]))
    pad = b.draw(st.sampled_from([0, k // 2]))
    stride = b.draw(st.sampled_from([1, 1, 2]))
    inputs = [x.name, b.weight((m, c // group, k, k))]
    if b.draw(st.booleans()):
        inputs.append(b.weight((m,)))
    out = [(d + 2 * pad - k) // stride + 1 for d in x.shape[2:]]
    y = b.add(Value(b.node("Conv", inputs, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2, group=group)[0], x.dtype, (x.shape[0], m, *out)))
    follow = b.draw(st.sampled_from(["none", "bn", "bn_relu", "relu", "add"]))
    if follow.startswith("bn"):
        params = [b.weights((m,)) + 1.0, b.weights((m,)), b.weights((m,)), np.abs(b.weights((m,))) + 0.5]
        y = b.add(Value(b.node("BatchNormalization", [y.name] + [b.constant(p.astype(np.float32)) for p in params], epsilon=1e-5)[0], y.dtype, y.shape))
    if follow.endswith("relu"):
        b.add(Value(b.node("Relu", [y.name])[0], y.dtype, y.shape))
    if follow == "add":
        b.add(Value(b.node("Add", [y.name, b.weight((1, m, 1, 1))])[0], y.dtype, y.shape))
    return True


def op_pool(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float and v.rank == 4 and all(d != N and d >= 2 for d in v.shape[1:]))
    if x is None:
        return False
    op = b.draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"]))
    if op.startswith("Global"):
        b.add(Value(b.node(op, [x.name])[0], x.dtype, (*x.shape[:2], 1, 1)))
        return True
    k = 2
    out = [(d - k) // 2 + 1 for d in x.shape[2:]]
    b.add(Value(b.node(op, [x.name], kernel_shape=[k, k], strides=[2, 2])[0], x.dtype, (*x.shape[:2], *out)))
    return True


def op_matmul(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float and v.rank >= 2 and v.shape[-1] != N)
    if x is None:
        return False
    k = x.shape[-1]
    m = b.draw(st.integers(1, 6))
    if x.rank == 2 and b.draw(st.booleans()):
        trans_b = b.draw(st.booleans())
        w = b.weights((m, k) if trans_b else (k, m))
        inputs = [x.name, b.constant(w, any_values=True)]
        if b.draw(st.booleans()):
            inputs.append(b.weight((m,)))
        y = b.node("Gemm", inputs, transB=int(trans_b), alpha=b.draw(st.sampled_from([1.0, 0.5])))[0]
        b.add(Value(y, x.dtype, (x.shape[0], m)))
        return True
    y = b.add(Value(b.node("MatMul", [x.name, b.weight((k, m))])[0], x.dtype, (*x.shape[:-1], m)))
    if b.draw(st.booleans()):
        b.add(Value(b.node("Add", [y.name, b.weight((m,))])[0], y.dtype, y.shape))
    return True


def op_reshape(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 2 and all(d != N for d in v.shape[1:]))
    if x is None:
        return False
    rest = list(x.shape[1:])
    kind = b.draw(st.sampled_from(["flatten_const", "flatten_op", "split_last", "dynamic"]))
    head = N if x.batched else x.shape[0]
    if kind == "flatten_op":
        b.add(Value(b.node("Flatten", [x.name], axis=1)[0], x.dtype, (head, int(np.prod(rest)))))
    elif kind == "flatten_const":
        b.add(Value(b.node("Reshape", [x.name, b.int_const([0, -1])])[0], x.dtype, (head, int(np.prod(rest)))))
    elif kind == "split_last" and rest[-1] % 2 == 0 and rest[-1] > 1:
        new = [0] + rest[:-1] + [2, rest[-1] // 2]
        b.add(Value(b.node("Reshape", [x.name, b.int_const(new)])[0], x.dtype, (head, *rest[:-1], 2, rest[-1] // 2)))
    else:  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape: folds when the shape is static
        shape = b.node("Shape", [x.name])[0]
        first = b.node("Gather", [shape, b.int_const(0)], axis=0)[0]
        first = b.node("Unsqueeze", [first, b.int_const([0])])[0]
        target = b.node("Concat", [first, b.int_const([-1])], axis=0)[0]
        b.add(Value(b.node("Reshape", [x.name, target])[0], x.dtype, (head, int(np.prod(rest)))))
    return True


def op_transpose(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 2)
    if x is None:
        return False
    fixed = 1 if x.batched else 0
    tail = b.draw(st.permutations(list(range(fixed, x.rank))))
    perm = list(range(fixed)) + list(tail)
    b.add(Value(b.node("Transpose", [x.name], perm=perm)[0], x.dtype, tuple(x.shape[p] for p in perm)))
    return True


def _axes(x: Value) -> list[int]:
    return [a for a in range(x.rank) if x.shape[a] != N]


def op_concat_split(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank >= 1 and _axes(v) and v.dtype != np.dtype(bool))
    if x is None:
        return False
    axis = b.draw(st.sampled_from(_axes(x)))
    neg = b.draw(st.booleans())
    if b.draw(st.booleans()):
        peers = [
            v for v in b.pool
            if v.dtype == x.dtype and v.rank == x.rank and v.shape[axis] != N and all(v.shape[i] == x.shape[i] for i in range(x.rank) if i != axis)
        ]
        other = b.draw(st.sampled_from(peers))
        shape = list(x.shape)
        shape[axis] = x.shape[axis] + other.shape[axis]
        b.add(Value(b.node("Concat", [x.name, other.name], axis=axis - x.rank if neg else axis)[0], x.dtype, tuple(shape)))
        return True
    size = x.shape[axis]
    if size < 2:
        return False
    first = b.draw(st.integers(1, size - 1))
    outs = b.node("Split", [x.name, b.int_const([first, size - first])], n_out=2, axis=axis)
    for out, part in zip(outs, (first, size - first)):
        shape = list(x.shape)
        shape[axis] = part
        b.add(Value(out, x.dtype, tuple(shape)))
    return True


def op_slice_gather(b: Builder) -> bool:
    x = b.pick(lambda v: any(v.shape[a] != N and v.shape[a] >= 2 for a in range(v.rank)))
    if x is None:
        return False
    axis = b.draw(st.sampled_from([a for a in range(x.rank) if x.shape[a] != N and x.shape[a] >= 2]))
    size = x.shape[axis]
    shape = list(x.shape)
    if b.draw(st.booleans()):
        start = b.draw(st.integers(0, size - 1))
        step = b.draw(st.sampled_from([1, 1, 2]))
        end = b.draw(st.sampled_from([size, 2**62, -1 if start < size - 1 else size]))
        inputs = [x.name, b.int_const([start]), b.int_const([end]), b.int_const([axis]), b.int_const([step])]
        shape[axis] = len(range(start, min(end, size) if end >= 0 else size + end, step))
        if shape[axis] == 0:
            return False
        b.add(Value(b.node("Slice", inputs)[0], x.dtype, tuple(shape)))
        return True
    count = b.draw(st.integers(1, 3))
    indices = [b.draw(st.integers(-size, size - 1)) for _ in range(count)]
    if b.draw(st.booleans()) and count == 1:
        del shape[axis]
        b.add(Value(b.node("Gather", [x.name, b.int_const(indices[0])], axis=axis)[0], x.dtype, tuple(shape)))
    else:
        shape[axis] = count
        b.add(Value(b.node("Gather", [x.name, b.int_const(indices)], axis=axis)[0], x.dtype, tuple(shape)))
    return True


def op_squeeze(b: Builder) -> bool:
    x = b.pick(lambda v: v.rank <= 4)
    if x is None:
        return False
    ones = [a for a in range(x.rank) if x.shape[a] == 1 and a > 0]
    if ones and b.draw(st.booleans()):
        axis = b.draw(st.sampled_from(ones))
        shape = x.shape[:axis] + x.shape[axis + 1 :]
        b.add(Value(b.node("Squeeze", [x.name, b.int_const([axis])])[0], x.dtype, shape))
        return True
    axis = b.draw(st.integers(1 if x.batched else 0, x.rank))
    b.add(Value(b.node("Unsqueeze", [x.name, b.int_const([axis])])[0], x.dtype, x.shape[:axis] + (1,) + x.shape[axis:]))
    return True


def op_expand_tile(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float and 1 <= v.rank <= 4 and _volume(v.shape) <= 256)
    if x is None:
        return False
    if b.draw(st.booleans()):
        reps = [1 if d == N else b.draw(st.integers(1, 2)) for d in x.shape]
        shape = tuple(N if d == N else d * r for d, r in zip(x.shape, reps))
        b.add(Value(b.node("Tile", [x.name, b.int_const(reps)])[0], x.dtype, shape))
        return True
    target = [1 if d == N else (b.draw(st.integers(2, 3)) if d == 1 else d) for d in x.shape]
    shape = tuple(N if d == N else t for d, t in zip(x.shape, target))
    b.add(Value(b.node("Expand", [x.name, b.int_const(target)])[0], x.dtype, shape))
    return True


def op_reduce(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float and v.rank >= 1)
    if x is None:
        return False
    op = b.draw(st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ArgMax"]))
    axis = b.draw(st.integers(0, x.rank - 1))
    keep = b.draw(st.booleans()) or (axis == 0 and x.batched) or x.rank == 1
    shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape)) if keep else x.shape[:axis] + x.shape[axis + 1 :]
    if op == "ArgMax":  # discrete; reads a float tensor straight from an input only
        if not x.is_input:
            return False
        b.add(Value(b.node("ArgMax", [x.name], axis=axis, keepdims=int(keep))[0], np.dtype(np.int64), shape))
    elif op == "ReduceSum" or b.opset >= 18:
        b.add(Value(b.node(op, [x.name, b.int_const([axis])], keepdims=int(keep))[0], x.dtype, shape))
    else:
        b.add(Value(b.node(op, [x.name], axes=[axis], keepdims=int(keep))[0], x.dtype, shape))
    return True


def op_normalize(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float and v.rank >= 2 and v.shape[-1] != N)
    if x is None:
        return False
    if b.opset >= 17 and b.draw(st.booleans()):
        d = x.shape[-1]
        scale, bias = b.constant(b.weights((d,)) + 1.0), b.constant(b.weights((d,)))
        b.add(Value(b.node("LayerNormalization", [x.name, scale, bias], axis=-1, epsilon=1e-5)[0], x.dtype, x.shape))
        return True
    axis = b.draw(st.sampled_from([a for a in range(-x.rank, 0) if x.shape[a] != N]))
    b.add(Value(b.node(b.draw(st.sampled_from(["Softmax", "LogSoftmax"])), [x.name], axis=axis)[0], x.dtype, x.shape))
    return True


def op_cast(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float)
    if x is None:
        return False
    # Only the float16 round trip: onnxruntime 1.32 loses the output of Cast(float->double)->Cast(double->float)
    # or of two float->float Casts when only an If branch reads it ("Missing Input"), even with its
    # optimizations off; an upstream bug, not ours (tests/fuzz/test_regressions.py records it).
    mid = b.node("Cast", [x.name], to=TensorProto.FLOAT16)[0]
    b.add(Value(b.node("Cast", [mid], to=TensorProto.FLOAT)[0], x.dtype, x.shape))
    return True


def op_where(b: Builder) -> bool:
    src = b.pick(lambda v: v.is_input and v.is_float)
    x = b.pick(lambda v: v.is_float)
    if src is None or x is None:
        return False
    shape = _broadcast(src.shape, x.shape)
    if shape is None or _volume(shape) > 4096:
        return False
    cond = b.node(b.draw(st.sampled_from(["Greater", "Less"])), [src.name, b.constant(np.float32(0.0))])[0]
    if b.draw(st.booleans()):
        cond = b.node("Not", [cond])[0]
    other = b.weight(_broadcastable_shape(b, shape))
    b.add(Value(b.node("Where", [cond, x.name, other])[0], x.dtype, shape))
    return True


def op_identity(b: Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    kind = b.draw(st.sampled_from(["Identity", "Dropout", "DropoutRatio"]))
    if kind == "Identity" or not x.is_float:
        b.add(Value(b.node("Identity", [x.name])[0], x.dtype, x.shape))
    elif kind == "Dropout":
        b.add(Value(b.node("Dropout", [x.name])[0], x.dtype, x.shape))
    else:
        inputs = [x.name, b.constant(np.float32(0.3)), b.constant(np.bool_(False))]
        b.add(Value(b.node("Dropout", inputs)[0], x.dtype, x.shape))
    return True


def op_constant_subgraph(b: Builder) -> bool:
    """Pure-constant work (ConstantOfShape, Range, arithmetic on weights) feeding a live op."""
    x = b.pick(lambda v: v.is_float and v.rank >= 1 and v.shape[-1] != N)
    if x is None:
        return False
    d = x.shape[-1]
    kind = b.draw(st.sampled_from(["range", "const_of_shape", "weight_math"]))
    if kind == "range":
        r = b.node("Range", [b.constant(np.float32(0.0)), b.constant(np.float32(d * 0.5)), b.constant(np.float32(0.5))])[0]
    elif kind == "const_of_shape":
        r = b.node("ConstantOfShape", [b.int_const([d])], value=numpy_helper.from_array(np.array([0.25], np.float32)))[0]
    else:
        r = b.node("Mul", [b.weight((d,)), b.weight((d,))])[0]
        r = b.node("Sqrt", [b.node("Add", [b.node("Abs", [r])[0], b.constant(np.float32(1.0))])[0]])[0]
    b.add(Value(b.node("Add", [x.name, r])[0], x.dtype, x.shape))
    return True


def op_shape_math(b: Builder) -> bool:
    """Integer shape arithmetic; on static shapes the result is a constant (maybe a graph output)."""
    x = b.pick(lambda v: v.rank >= 1)
    if x is None:
        return False
    if b.draw(st.booleans()):
        shape = b.add(Value(b.node("Shape", [x.name])[0], np.dtype(np.int64), (x.rank,)))
        b.add(Value(b.node("Mul", [shape.name, b.int_const(2)])[0], np.dtype(np.int64), shape.shape))
    else:
        b.add(Value(b.node("Size", [x.name])[0], np.dtype(np.int64), ()))
    return True


def op_dropout_mask(b: Builder) -> bool:
    """Dropout whose mask is read: in inference the mask is all true, but the node must stay or be replaced exactly."""
    x = b.pick(lambda v: v.is_float)
    if x is None:
        return False
    y, mask = b.node("Dropout", [x.name], n_out=2)
    b.add(Value(y, x.dtype, x.shape))
    b.add(Value(b.node("Add", [y, b.node("Cast", [mask], to=TensorProto.FLOAT)[0]])[0], x.dtype, x.shape))
    return True


def op_dead_branch(b: Builder) -> bool:
    x = b.pick()
    if x is None:
        return False
    op = "Neg" if x.is_float else "Identity"
    b.node(op, [b.node(op, [x.name])[0]])  # never added to the pool, so nothing reads it
    return True


def op_if(b: Builder) -> bool:
    x = b.pick(lambda v: v.is_float)
    if x is None:
        return False
    src = b.pick(lambda v: v.is_input and v.is_float)
    if src is not None and b.draw(st.booleans()):
        mean = b.node("ReduceMean", [src.name], keepdims=0)[0]
        cond = b.node("Greater", [mean, b.constant(np.float32(0.0))])[0]
    else:
        cond = b.constant(np.bool_(b.draw(st.booleans())))
    elem = ELEM[x.dtype]

    def branch(tag: str) -> onnx.GraphProto:
        op = b.draw(st.sampled_from(["Relu", "Neg", "Tanh", "Identity"]))
        inner = b.fresh(f"{tag}_")
        nodes = [helper.make_node(op, [x.name], [inner])]
        out = inner
        if b.draw(st.booleans()):  # a Constant inside the branch, and an Identity feeding the output
            k = b.fresh(f"{tag}_k")
            nodes.append(helper.make_node("Constant", [], [k], value=numpy_helper.from_array(np.float32(b.draw(st.sampled_from([0.5, 2.0]))))))
            out = b.fresh(f"{tag}_mul")
            nodes.append(helper.make_node("Mul", [inner, k], [out]))
        if b.draw(st.booleans()):
            final = b.fresh(f"{tag}_out")
            nodes.append(helper.make_node("Identity", [out], [final]))
            out = final
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(out, elem, None)])

    y = b.node("If", [cond], then_branch=branch("then"), else_branch=branch("else"))[0]
    b.add(Value(y, x.dtype, x.shape))
    return True


def op_sequence(b: Builder) -> bool:
    """Two same-shape values through a sequence: SequenceConstruct, then SequenceAt or ConcatFromSequence."""
    x = b.pick(lambda v: v.is_float and v.rank >= 1)
    if x is None:
        return False
    other = b.pick(lambda v: v.is_float and v.shape == x.shape and v.name != x.name)
    second = other.name if other is not None else b.node("Neg", [x.name])[0]
    seq = b.node("SequenceConstruct", [x.name, second])[0]
    if b.draw(st.booleans()) or x.shape[-1] == N:
        b.add(Value(b.node("SequenceAt", [seq, b.int_const(b.draw(st.sampled_from([0, 1, -1])))])[0], x.dtype, x.shape))
    else:
        shape = (*x.shape[:-1], 2 * x.shape[-1])
        b.add(Value(b.node("ConcatFromSequence", [seq], axis=-1)[0], x.dtype, shape))
    return True


def op_optional(b: Builder) -> bool:
    """A value wrapped in an Optional and taken out again; or, inside an If, an optional output."""
    x = b.pick(lambda v: v.is_float)
    if x is None or b.opset < 15:
        return False
    if b.draw(st.booleans()):
        opt = b.node("Optional", [x.name])[0]
        b.add(Value(b.node("OptionalGetElement", [opt])[0], x.dtype, x.shape))
        return True
    elem = helper.make_tensor_type_proto(ELEM[x.dtype], None)
    opt_type = helper.make_optional_type_proto(elem)
    then_out, else_out = b.fresh("then_opt"), b.fresh("else_opt")
    then_graph = helper.make_graph([helper.make_node("Optional", [x.name], [then_out])], "then", [], [helper.make_value_info(then_out, opt_type)])
    else_graph = helper.make_graph([helper.make_node("Optional", [], [else_out], type=elem)], "else", [], [helper.make_value_info(else_out, opt_type)])
    cond = b.constant(np.bool_(b.draw(st.booleans())))
    opt = b.node("If", [cond], then_branch=then_graph, else_branch=else_graph)[0]
    has = b.node("OptionalHasElement", [opt])[0]
    # Where(has, x, -x): the optional's presence decides, and both paths are exact
    b.add(Value(b.node("Where", [has, x.name, b.node("Neg", [x.name])[0]])[0], x.dtype, x.shape))
    return True


def op_low_precision_weight(b: Builder) -> bool:
    """A float16 or bfloat16 weight cast to float and added: folding and dedup must keep its type."""
    x = b.pick(lambda v: v.is_float and v.rank >= 1 and v.shape[-1] != N)
    if x is None:
        return False
    values = b.weights((x.shape[-1],))
    if b.draw(st.booleans()):
        name = b.constant(values.astype(np.float16))
    else:
        name = b.fresh("bf16_")
        b.initializers.append(helper.make_tensor(name, TensorProto.BFLOAT16, [len(values)], values.tolist()))
    widened = b.node("Cast", [name], to=TensorProto.FLOAT)[0]
    b.add(Value(b.node("Add", [x.name, widened])[0], x.dtype, x.shape))
    return True


def op_zero_size(b: Builder) -> bool:
    """An empty slice concatenated back: a zero-size intermediate tensor that changes nothing."""
    x = b.pick(lambda v: v.rank >= 1 and v.shape[-1] != N)
    if x is None:
        return False
    empty = b.node("Slice", [x.name, b.int_const([0]), b.int_const([0]), b.int_const([-1])])[0]
    b.add(Value(b.node("Concat", [x.name, empty], axis=-1)[0], x.dtype, x.shape))
    return True


def op_shape_slice(b: Builder) -> bool:
    """Shape with start/end (opset 15), negative and out of range, read as a constant."""
    x = b.pick(lambda v: v.rank >= 1)
    if x is None or b.opset < 15:
        return False
    start = b.draw(st.sampled_from([0, 1, -1, -x.rank - 2, x.rank + 1]))
    end = b.draw(st.sampled_from([None, -1, 1, x.rank + 3]))
    attrs = {"start": start} | ({"end": end} if end is not None else {})
    dims = list(range(x.rank))[slice(start, end)]
    shape = b.node("Shape", [x.name], **attrs)[0]
    b.add(Value(b.node("Mul", [shape, b.int_const(2)])[0], np.dtype(np.int64), (len(dims),)))
    return True


OPS = [
    op_unary, op_unary, op_binary, op_binary, op_conv, op_pool, op_matmul, op_reshape, op_transpose,
    op_concat_split, op_slice_gather, op_squeeze, op_expand_tile, op_reduce, op_normalize, op_cast,
    op_where, op_identity, op_constant_subgraph, op_dead_branch, op_if, op_shape_math, op_dropout_mask,
    op_sequence, op_optional, op_low_precision_weight, op_zero_size, op_shape_slice,
]


@st.composite
def models(draw, max_ops: int = 14) -> tuple[onnx.ModelProto, bool]:
    """A random valid model (checked by onnx.checker), and whether its inputs have the batch dim N."""
    opset = draw(st.sampled_from([13, 17, 18]))
    b = Builder(draw, np.random.default_rng(draw(st.integers(0, 2**16))), opset)
    batched = draw(st.booleans())
    for i in range(draw(st.integers(1, 2))):
        rank = draw(st.integers(2, 4))
        dims = [draw(st.integers(1, 6)) for _ in range(rank - 1)]
        if rank == 4:
            dims = [draw(st.integers(1, 4)), draw(st.integers(3, 8)), draw(st.integers(3, 8))]
        shape = ((N if batched else draw(st.integers(1, 2))), *dims)
        name = f"x{i}"
        b.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, _onnx_dims(shape)))
        b.add(Value(name, np.dtype(np.float32), tuple(shape), is_input=True))
    for _ in range(draw(st.integers(1, max_ops))):
        builder = draw(st.sampled_from(OPS))
        builder(b)
    if draw(st.booleans()):  # a second use of an input, so an input can also reach an output unchanged
        first = b.pool[0]
        b.add(Value(b.node("Identity", [first.name])[0], first.dtype, first.shape))
    computed = [v for v in b.pool if not v.is_input]
    candidates = computed or b.pool
    count = draw(st.integers(1, min(3, len(candidates))))
    chosen = list(dict.fromkeys(candidates[-1 - draw(st.integers(0, len(candidates) - 1))].name for _ in range(count)))
    chosen = [candidates[-1].name] + [c for c in chosen if c != candidates[-1].name]
    by_name = {v.name: v for v in b.pool}
    outputs = []
    for name in chosen:
        v = by_name[name]
        if v.is_input and draw(st.booleans()):  # an input read out as it is: directly, or through Identity
            name = b.node("Identity", [name])[0]
        dims = _onnx_dims(v.shape) if draw(st.booleans()) else [f"{name}_d{i}" for i in range(v.rank)]  # known or only the rank
        outputs.append(helper.make_tensor_value_info(name, ELEM[v.dtype], dims))
    if draw(st.booleans()):  # one value under a second output name (CSE must not merge the names away)
        v = by_name[chosen[0]]
        twin = b.node("Identity", [chosen[0]])[0]
        if v.is_float and draw(st.booleans()):  # -(-y): the same value computed again
            twin = b.node("Neg", [b.node("Neg", [chosen[0]])[0]])[0]
        outputs.append(helper.make_tensor_value_info(twin, ELEM[v.dtype], _onnx_dims(v.shape)))
    if b.consts and draw(st.booleans()):  # an initializer read out as a graph output
        weight = b.consts[0]
        if any(i.name == weight.name for i in b.initializers):
            outputs.append(helper.make_tensor_value_info(weight.name, ELEM[np.dtype(weight.dtype)], list(weight.shape)))
    graph = helper.make_graph(b.nodes, "fuzz", b.inputs, outputs, initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, batched


OLD_UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Softsign"]


@st.composite
def old_opset_models(draw, max_ops: int = 6) -> tuple[onnx.ModelProto, bool]:
    """A chain of ops valid at opset 6, below onnxopt's floor of 7 (such models are upgraded on load);
    older ones ONNX Runtime itself does not run."""
    opset = 6
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = [draw(st.integers(1, 3)), draw(st.integers(2, 6))]
    nodes, inits, current = [], [], "x"
    for i in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(OLD_UNARY + ["MatMul"]))
        out = f"t{i}"
        if kind == "MatMul":
            weight = (rng.standard_normal((shape[1], shape[1])) * 0.5).astype(np.float32)
            inits.append(numpy_helper.from_array(weight, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [out]))
        else:
            nodes.append(helper.make_node(kind, [current], [out]))
        current = out
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    weights_as_inputs = draw(st.booleans())  # IR 3 (exporters of that time) lists every weight as a graph input too
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info(w.name, TensorProto.FLOAT, list(w.dims)) for w in inits]
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info(current, TensorProto.FLOAT, shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if weights_as_inputs else 4
    onnx.checker.check_model(model)
    return model, False
