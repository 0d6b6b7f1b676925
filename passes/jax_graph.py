"""An ONNX graph as a differentiable JAX function of its weights, so they can be trained by gradient.

Layer-wise least squares fits each layer to the teacher's outputs at that layer; distillation
(distill.py) trains every weight at once against the teacher's final outputs, which needs the
gradient through the whole graph. JAX gives it from a NumPy-like definition of each operator, so
this module is one small function per ONNX operator, checked against ONNX Runtime by the tests.

JAX is an optional extra (`pip install onnxopt[distill]`), imported only when a graph is built.
Shape arithmetic (Shape, Range, the constants Reshape and Expand read) stays in NumPy, so traced
functions keep static shapes.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.errors import ConfigError

_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}


def import_jax():
    """jax and jax.numpy, or a one-line error naming the extra to install."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        raise ConfigError("distillation trains weights with JAX: pip install 'onnxopt[distill]' (jax, CPU wheels)") from None
    return jax, jnp


def _static(*values) -> bool:
    return all(v is None or isinstance(v, (np.ndarray, np.generic, int, float)) for v in values)


def _operators(jax, jnp) -> dict[str, Callable[[list, dict], Any]]:
    """ONNX operator -> function(inputs, attributes): one output, or a tuple of outputs."""

    def xp(*values):
        return np if _static(*values) else jnp

    def conv(x, w, b=None, group=1, strides=None, pads=None, dilations=None, auto_pad=b"NOTSET", **_):
        nd = w.ndim - 2
        mode = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if mode in ("SAME_UPPER", "SAME_LOWER"):
            padding = "SAME" if mode == "SAME_UPPER" else "SAME_LOWER"
        else:
            pads = list(pads) if pads else [0] * 2 * nd
            padding = [(int(pads[i]), int(pads[i + nd])) for i in range(nd)]
        depthwise = nd == 2 and int(group) == x.shape[1] == w.shape[0] and w.shape[1] == 1
        if depthwise and all(d == 1 for d in (dilations or ())) and not isinstance(padding, str):
            y = _depthwise(x, w, tuple(strides or (1, 1)), padding)
            return y if b is None else y + b.reshape(1, -1, 1, 1)
        y = jax.lax.conv_general_dilated(
            x, w, tuple(strides or (1,) * nd), padding, rhs_dilation=tuple(dilations or (1,) * nd),
            feature_group_count=int(group), dimension_numbers=("NCHW", "OIHW", "NCHW") if nd == 2 else None,
        )
        return y if b is None else y + b.reshape(1, -1, *([1] * nd))

    def _depthwise(x, w, strides, padding):
        """Depthwise conv as a sum of kh*kw shifted slices scaled per channel: XLA's grouped conv on CPU
        makes an EfficientNet-Lite0 training step ~5x slower (6.4 s vs 1.3 s at batch 8)."""
        x = jnp.pad(x, [(0, 0), (0, 0), *padding])
        kh, kw = w.shape[2:]
        sh, sw = strides
        oh = (x.shape[2] - kh) // sh + 1
        ow = (x.shape[3] - kw) // sw + 1
        y = 0
        for i in range(kh):
            for j in range(kw):
                y = y + x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] * w[:, 0, i, j].reshape(1, -1, 1, 1)
        return y

    def gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0, **_):
        y = alpha * ((a.T if transA else a) @ (b.T if transB else b))
        return y if c is None else y + beta * c

    def layer_norm(x, scale, bias=None, axis=-1, epsilon=1e-5, **_):
        axes = tuple(range(axis % x.ndim, x.ndim))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        y = (x - mean) / jnp.sqrt(var + epsilon) * scale
        return y if bias is None else y + bias

    def skip_layer_norm(x, skip, gamma, beta=None, bias=None, epsilon=1e-12, **_):
        total = x + skip + (0 if bias is None else bias)
        return layer_norm(total, gamma, beta, -1, epsilon), None, None, total

    def unsqueeze(inputs, attrs):
        x = inputs[0]
        axes = [int(a) for a in (np.asarray(inputs[1]) if len(inputs) > 1 else attrs["axes"])]
        rank = x.ndim + len(axes)
        for axis in sorted(a % rank for a in axes):
            x = xp(x).expand_dims(x, axis)
        return x

    def squeeze(inputs, attrs):
        x = inputs[0]
        axes = np.asarray(inputs[1]) if len(inputs) > 1 else attrs.get("axes")
        return xp(x).squeeze(x, axis=None if axes is None else tuple(int(a) % x.ndim for a in axes))

    def slice_(inputs, attrs):
        x, starts, ends = inputs[0], np.asarray(inputs[1]), np.asarray(inputs[2])
        axes = np.asarray(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else np.arange(len(starts))
        steps = np.asarray(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else np.ones(len(starts), dtype=np.int64)
        index = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            index[int(axis)] = slice(int(start), None if abs(int(end)) >= 2**62 else int(end), int(step))
        return x[tuple(index)]

    def reshape(inputs, attrs):
        x, shape = inputs[0], np.asarray(inputs[1])
        return x.reshape([x.shape[k] if d == 0 and not attrs.get("allowzero") else int(d) for k, d in enumerate(shape)])

    def gather(inputs, attrs):
        data, index = inputs
        index = np.asarray(index) if _static(index) else index.astype(jnp.int32)
        return xp(data, index).take(data, index, axis=attrs.get("axis", 0))

    def clip(inputs, attrs):
        low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
        high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
        return xp(*inputs).clip(inputs[0], low, high)

    def divide(a, b):
        if _static(a, b) and np.asarray(a).dtype.kind in "iu":
            return np.asarray(a) // np.asarray(b)
        return a / b

    def reduce_mean(inputs, attrs):
        x = inputs[0]
        axes = np.asarray(inputs[1]) if len(inputs) > 1 else attrs.get("axes")
        axes = tuple(range(x.ndim)) if axes is None else tuple(int(a) % x.ndim for a in axes)
        return jnp.mean(x, axis=axes, keepdims=bool(attrs.get("keepdims", 1)))

    def batch_norm(x, scale, bias, mean, var, epsilon=1e-5, **_):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + epsilon) * scale.reshape(shape) + bias.reshape(shape)

    def expand(inputs, attrs):
        x, shape = inputs[0], tuple(int(d) for d in np.asarray(inputs[1]))
        return xp(x).broadcast_to(x, np.broadcast_shapes(tuple(x.shape), shape))

    def flatten(x, axis=1, **_):
        return x.reshape(int(np.prod(x.shape[:axis])), -1)

    def split(inputs, attrs):
        x = inputs[0]
        axis = attrs.get("axis", 0) % x.ndim
        sizes = np.asarray(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else attrs.get("split")
        if sizes is None:
            sizes = [x.shape[axis] // attrs["num_outputs"]] * attrs["num_outputs"] if "num_outputs" in attrs else None
        cuts = np.cumsum(sizes)[:-1] if sizes is not None else None
        return tuple(xp(x).split(x, cuts if cuts is not None else 2, axis=axis))

    def max_pool(x, kernel_shape, strides=None, pads=None, **_):
        nd = len(kernel_shape)
        pads = list(pads) if pads else [0] * 2 * nd
        window = (1, 1) + tuple(kernel_shape)
        padding = ((0, 0), (0, 0)) + tuple((pads[i], pads[i + nd]) for i in range(nd))
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, (1, 1) + tuple(strides or (1,) * nd), padding)

    def average_pool(x, kernel_shape, strides=None, pads=None, count_include_pad=0, **_):
        nd = len(kernel_shape)
        pads = list(pads) if pads else [0] * 2 * nd
        window = (1, 1) + tuple(kernel_shape)
        step = (1, 1) + tuple(strides or (1,) * nd)
        padding = ((0, 0), (0, 0)) + tuple((pads[i], pads[i + nd]) for i in range(nd))
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, step, padding)
        if count_include_pad or not any(pads):
            return total / float(np.prod(kernel_shape))
        counts = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, window, step, padding)
        return total / counts

    def pad(inputs, attrs):
        x = inputs[0]
        pads = [int(p) for p in (np.asarray(inputs[1]) if len(inputs) > 1 else attrs["pads"])]
        axes = [int(a) % x.ndim for a in np.asarray(inputs[3])] if len(inputs) > 3 and inputs[3] is not None else list(range(x.ndim))
        widths = [(0, 0)] * x.ndim
        for k, axis in enumerate(axes):
            widths[axis] = (pads[k], pads[k + len(axes)])
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            return jnp.pad(x, widths, mode=mode)
        fill = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("value", 0.0)
        return jnp.pad(x, widths, constant_values=np.asarray(fill).reshape(-1)[0] if _static(fill) else fill)

    def plain(fn):
        return lambda inputs, attrs: fn(*inputs, **attrs)

    return {
        "Add": lambda i, a: i[0] + i[1],
        "Sub": lambda i, a: i[0] - i[1],
        "Mul": lambda i, a: i[0] * i[1],
        "Div": lambda i, a: divide(i[0], i[1]),
        "Pow": lambda i, a: xp(*i).power(i[0], i[1]),
        "Sqrt": lambda i, a: jnp.sqrt(i[0]),
        "Neg": lambda i, a: -i[0],
        "Exp": lambda i, a: jnp.exp(i[0]),
        "Erf": lambda i, a: jax.scipy.special.erf(i[0]),
        "Tanh": lambda i, a: jnp.tanh(i[0]),
        "Relu": lambda i, a: jax.nn.relu(i[0]),
        "Sigmoid": lambda i, a: jax.nn.sigmoid(i[0]),
        "HardSigmoid": lambda i, a: jnp.clip(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0),
        "HardSwish": lambda i, a: i[0] * jnp.clip(i[0] / 6.0 + 0.5, 0.0, 1.0),
        "Clip": clip,
        "Gelu": lambda i, a: jax.nn.gelu(i[0] if len(i) < 2 else i[0] + i[1], approximate=a.get("approximate", b"none") in (b"tanh", "tanh")),
        "FastGelu": lambda i, a: jax.nn.gelu(i[0] if len(i) < 2 or i[1] is None else i[0] + i[1], approximate=True),
        "BiasGelu": lambda i, a: jax.nn.gelu(i[0] + i[1], approximate=False),
        "Softmax": lambda i, a: jax.nn.softmax(i[0], axis=a.get("axis", -1)),
        "MatMul": lambda i, a: jnp.matmul(i[0], i[1]),
        "Gemm": plain(gemm),
        "Conv": plain(conv),
        "BatchNormalization": plain(batch_norm),
        "LayerNormalization": plain(layer_norm),
        "SkipLayerNormalization": plain(skip_layer_norm),
        "GlobalAveragePool": lambda i, a: jnp.mean(i[0], axis=tuple(range(2, i[0].ndim)), keepdims=True),
        "ReduceMean": reduce_mean,
        "MaxPool": plain(max_pool),
        "AveragePool": plain(average_pool),
        "Pad": pad,
        "Sum": lambda i, a: sum(i[1:], i[0]),
        "Identity": lambda i, a: i[0],
        "Shape": lambda i, a: np.asarray(i[0].shape, dtype=np.int64)[a.get("start", 0):a.get("end")],
        "Gather": gather,
        "Unsqueeze": unsqueeze,
        "Squeeze": squeeze,
        "Concat": lambda i, a: xp(*i).concatenate([xp(*i).asarray(v) for v in i], axis=a["axis"]),
        "ConstantOfShape": lambda i, a: np.full(tuple(int(d) for d in np.asarray(i[0])), numpy_helper.to_array(a["value"]).reshape(-1)[0] if "value" in a else np.float32(0)),
        "Range": lambda i, a: np.arange(np.asarray(i[0]).item(), np.asarray(i[1]).item(), np.asarray(i[2]).item()),
        "Reshape": reshape,
        "Flatten": plain(flatten),
        "Transpose": lambda i, a: xp(i[0]).transpose(i[0], a.get("perm")),
        "Expand": expand,
        "Slice": slice_,
        "Split": split,
        "Cast": lambda i, a: xp(i[0]).asarray(i[0]).astype(_DTYPES[a["to"]]),
        "Equal": lambda i, a: xp(*i).equal(i[0], i[1]),
        "Greater": lambda i, a: xp(*i).greater(i[0], i[1]),
        "GreaterOrEqual": lambda i, a: xp(*i).greater_equal(i[0], i[1]),
        "Less": lambda i, a: xp(*i).less(i[0], i[1]),
        "And": lambda i, a: xp(*i).logical_and(i[0], i[1]),
        "Not": lambda i, a: xp(*i).logical_not(i[0]),
        "Where": lambda i, a: xp(*i).where(i[0], i[1], i[2]),
    }


class JaxGraph:
    """`graph(params, feeds)` runs the model with `params` (trainable initializers by name) in JAX.

    Trainable: every float32 initializer except embedding tables (Gather data: large, and a
    token's row gets few gradient steps), BatchNormalization running statistics and shape operands. `unsupported` names the operators
    this module lacks; such a graph cannot be built."""

    def __init__(self, model: onnx.ModelProto):
        self.jax, self.jnp = import_jax()
        self.ops = _operators(self.jax, self.jnp)
        graph = model.graph
        self.model = model
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                value = onnx.helper.get_attribute_value(node.attribute[0])
                self.constants[node.output[0]] = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
        self.nodes = [
            (n.op_type, list(n.input), list(n.output), {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
            for n in graph.node if n.op_type != "Constant"
        ]
        self.inputs = [i.name for i in graph.input if i.name not in self.constants]
        self.outputs = [o.name for o in graph.output]
        self.unsupported = sorted({op for op, *_ in self.nodes} - set(self.ops))
        frozen = {n.input[0] for n in graph.node if n.op_type == "Gather"}
        frozen |= {name for n in graph.node if n.op_type == "BatchNormalization" for name in n.input[3:5]}  # running statistics
        frozen |= {n.input[1] for n in graph.node if n.op_type in ("Reshape", "Expand", "Slice", "Unsqueeze", "Squeeze", "Split") and len(n.input) > 1}
        initializers = {t.name for t in graph.initializer}  # Constant nodes' values stay fixed
        self.trainable = [k for k, v in self.constants.items() if v.dtype == np.float32 and v.ndim >= 1 and k not in frozen and k in initializers]

    def params(self) -> dict[str, Any]:
        return {name: self.jnp.asarray(self.constants[name]) for name in self.trainable}

    def __call__(self, params: dict[str, Any], feeds: dict[str, Any], names: list[str] | None = None) -> list[Any]:
        """The graph outputs, or the tensors `names` (intermediate ones too)."""
        if self.unsupported:
            raise ConfigError(f"no JAX form for operator(s) {', '.join(self.unsupported)}")
        values = dict(feeds)

        def value(name):
            if not name:
                return None
            if name in params:
                return params[name]
            return self.constants[name] if name in self.constants else values[name]

        for op, inputs, outputs, attrs in self.nodes:
            result = self.ops[op]([value(n) for n in inputs], attrs)
            results = result if isinstance(result, tuple) else (result,)
            for name, out in zip(outputs, results):
                if name:
                    values[name] = out
        return [values[name] for name in (names or self.outputs)]
