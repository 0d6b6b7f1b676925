"""Tiny conv graphs for the pruning and depthwise tests, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """Accumulates nodes and weights; each method returns the name of the tensor it produced."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, base: str, value) -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, outputs: int = 1, **attrs) -> str | list[str]:
        name = name or self._name(op_type.lower())
        outs = [f"{name}.out{i}" if outputs > 1 else f"{name}.out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs if outputs > 1 else outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, name: str | None = None, group: int = 1, stride: int = 1, bias: bool = True) -> str:
        name = name or self._name("conv")
        w = self.const(f"{name}.w", (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))).astype(np.float32))
        inputs = [x, w] + ([self.const(f"{name}.b", self.rng.normal(0, 0.1, cout).astype(np.float32))] if bias else [])
        return self.op("Conv", inputs, name, kernel_shape=[k, k], pads=[k // 2] * 4, group=group, strides=[stride, stride])

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        name = name or self._name("bn")
        params = [
            self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.1, c), self.rng.normal(0, 0.1, c), self.rng.uniform(0.5, 1.5, c)
        ]
        return self.op("BatchNormalization", [x] + [self.const(f"{name}.p", p.astype(np.float32)) for p in params], name)

    def conv_bn_relu(self, x: str, cin: int, cout: int, k: int = 3, name: str | None = None, group: int = 1, stride: int = 1) -> str:
        name = name or self._name("block")
        y = self.conv(x, cin, cout, k, f"{name}.conv", group, stride)
        return self.op("Relu", [self.bn(y, cout, f"{name}.bn")], f"{name}.relu")

    def head(self, x: str, c: int, classes: int = 5) -> str:
        y = self.op("Flatten", [self.op("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
        w = self.const("fc.w", (self.rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32))
        return self.op("Gemm", [y, w, self.const("fc.b", np.zeros(classes, np.float32))], "fc", transB=1)

    def model(self, output: str, in_shape=(1, 3, 16, 16), out_shape=(1, 5), opset: int = 17) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "y"
        for node in self.nodes[:-1]:
            for i, name in enumerate(node.input):
                if name == output:
                    node.input[i] = "y"
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def plain_cnn(seed: int = 0) -> onnx.ModelProto:
    """conv-bn-relu x2 with a max-pool, then GAP, Flatten, Gemm: three simple groups."""
    n = Net(seed)
    y = n.conv_bn_relu("x", 3, 16, name="a")
    y = n.op("MaxPool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])
    y = n.conv_bn_relu(y, 16, 24, name="b")
    return n.model(n.head(y, 24))


def residual_cnn(seed: int = 0) -> onnx.ModelProto:
    """stem -> (conv-bn-relu, conv-bn) + stem -> relu: stem and the block's second conv share channels."""
    n = Net(seed)
    stem = n.conv_bn_relu("x", 3, 16, name="stem")
    y = n.conv_bn_relu(stem, 16, 16, name="r1")
    y = n.bn(n.conv(y, 16, 16, name="r2.conv"), 16, "r2.bn")
    y = n.op("Relu", [n.op("Add", [y, stem], "add")], "add.relu")
    y = n.conv_bn_relu(y, 16, 16, name="tail")
    return n.model(n.head(y, 16))


def concat_cnn(seed: int = 0) -> onnx.ModelProto:
    """two branches concatenated, split again: channel indices shift through Concat and Split."""
    n = Net(seed)
    stem = n.conv_bn_relu("x", 3, 16, name="stem")
    left = n.conv_bn_relu(stem, 16, 16, name="left")
    right = n.conv_bn_relu(stem, 16, 16, k=1, name="right")
    cat = n.op("Concat", [left, right], "cat", axis=1)
    y = n.conv_bn_relu(cat, 32, 24, name="after")
    first, second = n.op("Split", [y, n.const("split", np.array([16, 8], np.int64))], "split", outputs=2, axis=1)
    y = n.op("Add", [n.conv(first, 16, 8, 1, name="p"), second], "join")
    return n.model(n.head(y, 8))


def depthwise_cnn(seed: int = 0) -> onnx.ModelProto:
    """an inverted residual: expand 1x1, depthwise 3x3, project 1x1 (MobileNetV2)."""
    n = Net(seed)
    stem = n.conv_bn_relu("x", 3, 16, name="stem")
    y = n.conv_bn_relu(stem, 16, 48, k=1, name="expand")
    y = n.conv_bn_relu(y, 48, 48, k=3, name="dw", group=48)
    y = n.bn(n.conv(y, 48, 16, k=1, name="project.conv"), 16, "project.bn")
    y = n.op("Add", [y, stem], "add")
    return n.model(n.head(y, 16))


def grouped_cnn(seed: int = 0) -> onnx.ModelProto:
    """a grouped 3x3 conv (4 groups of 8 channels) between two plain convs (ResNeXt)."""
    n = Net(seed)
    y = n.conv_bn_relu("x", 3, 32, name="a")
    y = n.conv_bn_relu(y, 32, 32, name="g", group=4)
    y = n.conv_bn_relu(y, 32, 16, k=1, name="c")
    return n.model(n.head(y, 16))


def reshape_mixing_cnn(seed: int = 0) -> onnx.ModelProto:
    """channel shuffle (Reshape to groups, Transpose, Reshape back): pruning must be blocked there."""
    n = Net(seed)
    y = n.conv_bn_relu("x", 3, 16, name="a")
    y = n.op("Reshape", [y, n.const("s1", np.array([1, 4, 4, 16, 16], np.int64))], "shuffle.r1")
    y = n.op("Transpose", [y], "shuffle.t", perm=[0, 2, 1, 3, 4])
    y = n.op("Reshape", [y, n.const("s2", np.array([1, 16, 16, 16], np.int64))], "shuffle.r2")
    y = n.conv_bn_relu(y, 16, 16, name="b")
    return n.model(n.head(y, 16))


def samples(model: onnx.ModelProto, count: int = 8, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Feed dicts for the graph's input (structure tests only: no accuracy is claimed on them)."""
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def flatten_gemm_cnn(seed: int = 0, dead_channels: slice | None = None) -> onnx.ModelProto:
    """conv on 4x4, Reshape [1, C*16] (a constant shape), Gemm: channel c becomes 16 features.

    With `dead_channels`, the Gemm ignores those channels (their 16 columns are zero)."""
    n = Net(seed)
    y = n.conv_bn_relu("x", 3, 16, name="a")
    y = n.op("Reshape", [y, n.const("shape", np.array([1, 256], np.int64))], "reshape")
    w = (n.rng.standard_normal((5, 16, 16)) / 16).astype(np.float32)
    if dead_channels is not None:
        w[:, dead_channels] = 0.0
    fc = n.op("Gemm", [y, n.const("fc.w", w.reshape(5, 256)), n.const("fc.b", np.zeros(5, np.float32))], "fc", transB=1)
    return n.model(fc, in_shape=(1, 3, 4, 4))


def view_flatten_cnn(seed: int = 0) -> onnx.ModelProto:
    """conv, GAP, then `x.view(batch, -1)` as PyTorch exports it (Reshape to Concat(Shape(x)[0], -1)),
    Gemm; the batch is symbolic, so shape inference leaves the flattened size unknown. Channels
    8..15 of the conv feed nothing (their Gemm columns are zero)."""
    n = Net(seed)
    y = n.conv_bn_relu("x", 3, 16, name="a")
    pooled = n.op("GlobalAveragePool", [y], "gap")
    batch = n.op("Gather", [n.op("Shape", ["x"], "shape"), n.const("zero", np.array(0, np.int64))], "batch", axis=0)
    target = n.op("Concat", [n.op("Unsqueeze", [batch, n.const("axes", np.array([0], np.int64))], "batch1"), n.const("rest", np.array([-1], np.int64))], "target", axis=0)
    flat = n.op("Reshape", [pooled, target], "view")
    w = (n.rng.standard_normal((5, 16)) / 4).astype(np.float32)
    w[:, 8:] = 0.0
    fc = n.op("Gemm", [flat, n.const("fc.w", w), n.const("fc.b", np.zeros(5, np.float32))], "fc", transB=1)
    return n.model(fc, in_shape=("N", 3, 8, 8), out_shape=("N", 5))


def duplicate_channel_cnn(seed: int = 3) -> onnx.ModelProto:
    """1x1 conv a (8 channels, relu), 1x1 conv b, head; channel 5 of a duplicates channel 2, so
    whatever channel 5 feeds, channel 2 can carry once b's weights compensate."""
    n = Net(seed)
    y = n.op("Relu", [n.conv("x", 3, 8, k=1, name="a")], "a.relu")
    y = n.conv(y, 8, 8, k=1, name="b")
    model = n.model(n.head(y, 8))
    weights = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(weights["a.w1"]).copy()
    b = numpy_helper.to_array(weights["a.b2"]).copy()
    w[5], b[5] = w[2], b[2]
    weights["a.w1"].CopyFrom(numpy_helper.from_array(w, "a.w1"))
    weights["a.b2"].CopyFrom(numpy_helper.from_array(b, "a.b2"))
    return model
