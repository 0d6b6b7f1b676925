"""Small ONNX models built in code, the fixtures every pass test starts from.

Each builder returns a checked `onnx.ModelProto` with float32 weights drawn from a fixed numpy
seed, so a test sees the same numbers on every run and machine. The graphs imitate what real
exporters emit (BatchNormalization left unfused, LayerNorm and GELU decomposed, shape subgraphs,
Constant-node weights) because those are the shapes the passes must recognise.

Only onnx and numpy are imported here: tests must not pull in torch.
"""

from __future__ import annotations

import collections
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


class _Graph:
    """Accumulates nodes and initializers so a builder reads like the network it describes."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._used: collections.Counter[str] = collections.Counter()

    def unique(self, base: str) -> str:
        self._used[base] += 1
        n = self._used[base]
        return base if n == 1 else f"{base}_{n - 1}"

    def init(self, name: str, array, dtype=np.float32) -> str:
        name = self.unique(name)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def ints(self, name: str, values) -> str:
        return self.init(name, values, dtype=np.int64)

    def op(self, op_type: str, inputs: list[str], name: str | None = None, outputs: int = 1, **attrs):
        """Append a node; return its output name (or a list of names when outputs > 1)."""
        node_name = self.unique(name or op_type)
        outs = [f"{node_name}_out{i}" if outputs > 1 else f"{node_name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, **attrs))
        return outs if outputs > 1 else outs[0]

    def rename_output(self, old: str, new: str) -> str:
        """Give the tensor `old` the graph-output name `new` (producers and consumers follow)."""
        for node in self.nodes:
            node.output[:] = [new if o == old else o for o in node.output]
            node.input[:] = [new if i == old else i for i in node.input]
        return new

    # -- layers ---------------------------------------------------------------------------------

    def he(self, shape, fan_in: int) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))

    def conv(self, x, cin, cout, k, stride=1, group=1, bias=False, name="conv", pad=None):
        w = self.init(f"{name}.weight", self.he((cout, cin // group, k, k), cin // group * k * k))
        inputs = [x, w]
        if bias:
            inputs.append(self.init(f"{name}.bias", self.rng.normal(0, 0.05, cout)))
        p = k // 2 if pad is None else pad
        return self.op("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[p, p, p, p], group=group, dilations=[1, 1])

    def bn(self, x, c, name="bn", gamma_scale=1.0):
        """BatchNormalization with non-trivial statistics, so folding it is never a no-op."""
        gamma = self.init(f"{name}.weight", self.rng.uniform(0.5, 1.5, c) * gamma_scale)
        beta = self.init(f"{name}.bias", self.rng.normal(0, 0.1, c))
        mean = self.init(f"{name}.running_mean", self.rng.normal(0, 0.1, c))
        var = self.init(f"{name}.running_var", self.rng.uniform(0.5, 1.5, c))
        return self.op("BatchNormalization", [x, gamma, beta, mean, var], name, epsilon=1e-5, momentum=0.9)

    def relu6(self, x, name="relu6"):
        lo = self.init(f"{name}.min", 0.0)
        hi = self.init(f"{name}.max", 6.0)
        return self.op("Clip", [x, lo, hi], name)

    def conv_bn(self, x, cin, cout, k, stride=1, group=1, name="conv", act="Relu", gamma_scale=1.0):
        y = self.conv(x, cin, cout, k, stride, group, name=f"{name}.conv")
        y = self.bn(y, cout, name=f"{name}.bn", gamma_scale=gamma_scale)
        if act == "Relu":
            y = self.op("Relu", [y], f"{name}.relu")
        elif act == "Relu6":
            y = self.relu6(y, f"{name}.relu6")
        return y

    def linear(self, x, cin, cout, name="fc"):
        """Gemm with transB=1, the form torch exports nn.Linear in."""
        w = self.init(f"{name}.weight", self.rng.standard_normal((cout, cin)) * np.sqrt(1.0 / cin))
        b = self.init(f"{name}.bias", self.rng.normal(0, 0.05, cout))
        return self.op("Gemm", [x, w, b], name, alpha=1.0, beta=1.0, transB=1)

    def head(self, x, cin, num_classes):
        y = self.op("GlobalAveragePool", [x], "avgpool")
        y = self.op("Flatten", [y], "flatten", axis=1)
        return self.linear(y, cin, num_classes, "fc")

    def model(self, inputs, outputs, name: str, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="onnxopt.models.builders")
        model.ir_version = 8 if opset <= 17 else 9
        onnx.checker.check_model(model)  # tests add full_check (strict shape inference)
        return model


def _tensor(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


# -- small fixtures -------------------------------------------------------------------------------


def conv_bn_relu(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu on 1x3x16x16: the smallest fusion target."""
    g = _Graph(seed)
    y = g.conv("input", 3, 8, 3, bias=True, name="conv")
    y = g.bn(y, 8, name="bn")
    y = g.op("Relu", [y], "relu")
    g.rename_output(y, "output")
    return g.model([_tensor("input", [1, 3, 16, 16])], [_tensor("output", [1, 8, 16, 16])], "conv_bn_relu")


def residual_net(seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu blocks with a residual Add, a Concat branch, MaxPool, GAP and a Gemm head."""
    g = _Graph(seed)
    stem = g.conv_bn("input", 3, 16, 3, name="stem")
    y = g.conv_bn(stem, 16, 16, 3, name="block1.a")
    y = g.conv_bn(y, 16, 16, 3, name="block1.b", act=None, gamma_scale=0.5)
    y = g.op("Relu", [g.op("Add", [y, stem], "block1.add")], "block1.relu")
    left = g.conv_bn(y, 16, 8, 1, name="branch.left")
    right = g.conv_bn(y, 16, 8, 3, name="branch.right")
    y = g.op("Concat", [left, right], "branch.concat", axis=1)
    y = g.op("MaxPool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])
    y = g.conv_bn(y, 16, 32, 3, name="block2")
    y = g.rename_output(g.head(y, 32, 10), "logits")
    return g.model([_tensor("input", [1, 3, 32, 32])], [_tensor("logits", [1, 10])], "residual_net")


def transformer_block(opset: int = 14, seed: int = 0, layers: int = 1) -> onnx.ModelProto:
    """Post-LN BERT encoder layers on x [1,8,32] (one by default), LayerNorm and erf-GELU decomposed as exported."""
    g = _Graph(seed)
    seq, dim, heads, ffn = 8, 32, 4, 64
    head_dim = dim // heads

    def reduce_mean(x, name):
        if opset >= 18:
            return g.op("ReduceMean", [x, g.ints(f"{name}.axes", [-1])], name, keepdims=1)
        return g.op("ReduceMean", [x], name, axes=[-1], keepdims=1)

    def layer_norm(x, name):
        mean = reduce_mean(x, f"{name}.mean")
        centered = g.op("Sub", [x, mean], f"{name}.sub")
        sq = g.op("Pow", [centered, g.init(f"{name}.two", 2.0)], f"{name}.pow")
        var = reduce_mean(sq, f"{name}.var")
        std = g.op("Sqrt", [g.op("Add", [var, g.init(f"{name}.eps", 1e-12)], f"{name}.add_eps")], f"{name}.sqrt")
        normed = g.op("Div", [centered, std], f"{name}.div")
        scaled = g.op("Mul", [normed, g.init(f"{name}.weight", g.rng.uniform(0.8, 1.2, dim))], f"{name}.mul")
        return g.op("Add", [scaled, g.init(f"{name}.bias", g.rng.normal(0, 0.05, dim))], f"{name}.add")

    def dense(x, cin, cout, name):
        w = g.init(f"{name}.weight", g.rng.standard_normal((cin, cout)) * np.sqrt(1.0 / cin))
        y = g.op("MatMul", [x, w], f"{name}.matmul")
        return g.op("Add", [y, g.init(f"{name}.bias", g.rng.normal(0, 0.02, cout))], f"{name}.add")

    def split_heads(x, name, perm):
        y = g.op("Reshape", [x, g.ints(f"{name}.shape", [1, seq, heads, head_dim])], f"{name}.reshape")
        return g.op("Transpose", [y], f"{name}.transpose", perm=perm)

    def encoder_layer(x, p):
        q = split_heads(dense(x, dim, dim, f"{p}attn.query"), f"{p}attn.q", [0, 2, 1, 3])
        k = split_heads(dense(x, dim, dim, f"{p}attn.key"), f"{p}attn.k", [0, 2, 3, 1])
        v = split_heads(dense(x, dim, dim, f"{p}attn.value"), f"{p}attn.v", [0, 2, 1, 3])
        scores = g.op("MatMul", [q, k], f"{p}attn.scores")
        scores = g.op("Div", [scores, g.init(f"{p}attn.scale", np.sqrt(head_dim))], f"{p}attn.scale_div")
        probs = g.op("Softmax", [scores], f"{p}attn.softmax", axis=-1)
        ctx = g.op("MatMul", [probs, v], f"{p}attn.context")
        ctx = g.op("Transpose", [ctx], f"{p}attn.merge.transpose", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.ints(f"{p}attn.merge.shape", [1, seq, dim])], f"{p}attn.merge.reshape")
        attn = dense(ctx, dim, dim, f"{p}attn.output")
        h = layer_norm(g.op("Add", [attn, x], f"{p}attn.residual"), f"{p}attn.ln")

        up = dense(h, dim, ffn, f"{p}ffn.up")
        erf = g.op("Erf", [g.op("Div", [up, g.init(f"{p}gelu.sqrt2", np.sqrt(2.0))], f"{p}gelu.div")], f"{p}gelu.erf")
        gelu = g.op("Add", [erf, g.init(f"{p}gelu.one", 1.0)], f"{p}gelu.add")
        gelu = g.op("Mul", [up, gelu], f"{p}gelu.mul")
        gelu = g.op("Mul", [gelu, g.init(f"{p}gelu.half", 0.5)], f"{p}gelu.mul_half")
        down = dense(gelu, ffn, dim, f"{p}ffn.down")
        return layer_norm(g.op("Add", [down, h], f"{p}ffn.residual"), f"{p}ffn.ln")

    out = "x"
    for i in range(layers):
        out = encoder_layer(out, f"layer{i}." if i else "")
    g.rename_output(out, "y")
    return g.model([_tensor("x", [1, seq, dim])], [_tensor("y", [1, seq, dim])], "transformer_block", opset)


def dynamic_dims_model(seed: int = 0) -> onnx.ModelProto:
    """x [batch, seq, 16] reshaped through Shape->Gather->Unsqueeze->Concat->Reshape subgraphs."""
    g = _Graph(seed)
    h = g.op("Add", [g.op("MatMul", ["x", g.init("proj.weight", g.he((16, 16), 16))], "proj.matmul"),
                     g.init("proj.bias", g.rng.normal(0, 0.05, 16))], "proj.add")
    shape = g.op("Shape", [h], "shape")
    zero_axis = g.ints("unsqueeze.axes", [0])
    batch = g.op("Unsqueeze", [g.op("Gather", [shape, g.ints("idx0", 0)], "gather_batch", axis=0), zero_axis],
                 "unsqueeze_batch")
    seq = g.op("Unsqueeze", [g.op("Gather", [shape, g.ints("idx1", 1)], "gather_seq", axis=0), zero_axis],
               "unsqueeze_seq")
    split = g.op("Concat", [batch, seq, g.ints("heads", [4, 4])], "concat_split", axis=0)
    y = g.op("Softmax", [g.op("Reshape", [h, split], "reshape_split")], "softmax", axis=-1)
    merge = g.op("Concat", [batch, seq, g.ints("merged", [16])], "concat_merge", axis=0)
    y = g.op("Reshape", [y, merge], "reshape_merge")
    y = g.op("MatMul", [y, g.init("out.weight", g.he((16, 8), 16))], "out.matmul")
    g.rename_output(y, "y")
    return g.model([_tensor("x", ["batch", "seq", 16])], [_tensor("y", ["batch", "seq", 8])], "dynamic_dims")


def constant_weights_model(seed: int = 0) -> onnx.ModelProto:
    """Conv net with Constant-node weights, an Identity, an inference Dropout and duplicate initializers."""
    g = _Graph(seed)

    def constant(name, array):
        tensor = numpy_helper.from_array(np.asarray(array, np.float32), name)
        return g.op("Constant", [], name, value=tensor)

    w1 = constant("conv1.weight", g.he((8, 3, 3, 3), 27))
    b1 = constant("conv1.bias", g.rng.normal(0, 0.05, 8))
    w2 = constant("conv2.weight", g.he((8, 8, 3, 3), 72))
    b2 = constant("conv2.bias", g.rng.normal(0, 0.05, 8))
    scale = g.rng.uniform(0.5, 1.5, (1, 8, 1, 1))
    y = g.op("Conv", ["input", w1, b1], "conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.op("Identity", [y], "identity")
    y = g.op("Mul", [g.op("Relu", [y], "relu1"), g.init("scale_a", scale)], "mul_a")
    y = g.op("Dropout", [y], "dropout")
    y = g.op("Conv", [y, w2, b2], "conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.op("Mul", [g.op("Relu", [y], "relu2"), g.init("scale_b", scale.copy())], "mul_b")
    g.rename_output(y, "output")
    return g.model([_tensor("input", [1, 3, 16, 16])], [_tensor("output", [1, 8, 16, 16])], "constant_weights")


def if_subgraph_model(seed: int = 0) -> onnx.ModelProto:
    """An If on sum(x) > 0 whose branches read the outer-scope tensor h and hold Constant nodes."""
    g = _Graph(seed)
    h = g.op("MatMul", ["x", g.init("proj.weight", g.he((4, 4), 4))], "proj")
    total = g.op("ReduceSum", ["x"], "sum", keepdims=0)
    cond = g.op("Greater", [total, g.init("zero", 0.0)], "positive")

    def branch(name, op_type, value):
        const = numpy_helper.from_array(np.asarray(value, np.float32), f"{name}.value")
        nodes = [helper.make_node("Constant", [], [f"{name}.c"], name=f"{name}.const", value=const),
                 helper.make_node(op_type, [h, f"{name}.c"], [f"{name}.out"], name=f"{name}.{op_type.lower()}")]
        return helper.make_graph(nodes, name, [], [_tensor(f"{name}.out", [2, 4])])

    y = g.op("If", [cond], "if", then_branch=branch("then", "Mul", g.rng.uniform(0.5, 1.5, 4)),
             else_branch=branch("else", "Add", g.rng.normal(0, 1, 4)))
    y = g.op("Relu", [y], "relu")
    g.rename_output(y, "y")
    return g.model([_tensor("x", [2, 4])], [_tensor("y", [2, 4])], "if_subgraph")


# -- architecture-faithful benchmark models --------------------------------------------------------


def _resnet(blocks: list[int], bottleneck: bool, input_size: int, num_classes: int, seed: int, name: str):
    """torchvision ResNet v1.5 (stride on the 3x3), BN unfused; last BN of a block scaled down so
    the random-weight activations stay finite through the residual sum."""
    g = _Graph(seed)
    y = g.conv_bn("input", 3, 64, 7, stride=2, name="stem")
    y = g.op("MaxPool", [y], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin, expansion = 64, 4 if bottleneck else 1
    for stage, (count, width) in enumerate(zip(blocks, [64, 128, 256, 512]), start=1):
        for i in range(count):
            stride = 2 if i == 0 and stage > 1 else 1
            cout = width * expansion
            p = f"layer{stage}.{i}"
            if bottleneck:
                z = g.conv_bn(y, cin, width, 1, name=f"{p}.1")
                z = g.conv_bn(z, width, width, 3, stride, name=f"{p}.2")
                z = g.conv_bn(z, width, cout, 1, name=f"{p}.3", act=None, gamma_scale=0.2)
            else:
                z = g.conv_bn(y, cin, width, 3, stride, name=f"{p}.1")
                z = g.conv_bn(z, width, cout, 3, name=f"{p}.2", act=None, gamma_scale=0.2)
            shortcut = y
            if stride != 1 or cin != cout:
                shortcut = g.conv_bn(y, cin, cout, 1, stride, name=f"{p}.downsample", act=None)
            y = g.op("Relu", [g.op("Add", [z, shortcut], f"{p}.add")], f"{p}.relu")
            cin = cout
    g.rename_output(g.head(y, cin, num_classes), "logits")
    return g.model([_tensor("input", [1, 3, input_size, input_size])], [_tensor("logits", [1, num_classes])], name)


def resnet18_shaped(input_size: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 layout (11.7M params at 1000 classes) with He-random weights, for benchmarks."""
    return _resnet([2, 2, 2, 2], False, input_size, num_classes, seed, "resnet18_shaped")


def resnet50_shaped(input_size: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-50 layout (25.6M params at 1000 classes) with He-random weights, for benchmarks."""
    return _resnet([3, 4, 6, 3], True, input_size, num_classes, seed, "resnet50_shaped")


def mobilenet_v2_shaped(input_size: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 layout (inverted residuals, depthwise convs, Relu6 as Clip) with He-random weights."""
    g = _Graph(seed)
    y = g.conv_bn("input", 3, 32, 3, stride=2, name="features.0", act="Relu6")
    cin, index = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride, hidden, p = (s if i == 0 else 1), cin * t, f"features.{index}"
            z = y if t == 1 else g.conv_bn(y, cin, hidden, 1, name=f"{p}.expand", act="Relu6")
            z = g.conv_bn(z, hidden, hidden, 3, stride, group=hidden, name=f"{p}.dw", act="Relu6")
            z = g.conv_bn(z, hidden, c, 1, name=f"{p}.project", act=None, gamma_scale=0.5)
            y = g.op("Add", [z, y], f"{p}.add") if stride == 1 and cin == c else z
            cin, index = c, index + 1
    y = g.conv_bn(y, cin, 1280, 1, name=f"features.{index}", act="Relu6")
    g.rename_output(g.head(y, 1280, num_classes), "logits")
    return g.model([_tensor("input", [1, 3, input_size, input_size])], [_tensor("logits", [1, num_classes])],
                   "mobilenet_v2_shaped")


def mobilenet_v3_shaped(input_size: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV3-Small layout (HardSwish, depthwise convs, squeeze-excite with HardSigmoid) with
    He-random weights: the graph whose Q/DQ boundaries make int8 slower than float on many CPUs."""
    g = _Graph(seed)

    def act(x, kind, name):
        return g.op("HardSwish", [x], f"{name}.hswish") if kind == "HS" else g.op("Relu", [x], f"{name}.relu")

    def squeeze_excite(x, c, name):
        squeezed = _make_divisible(c // 4)
        s = g.op("GlobalAveragePool", [x], f"{name}.pool")
        s = g.op("Relu", [g.conv(s, c, squeezed, 1, bias=True, name=f"{name}.fc1")], f"{name}.relu")
        s = g.op("HardSigmoid", [g.conv(s, squeezed, c, 1, bias=True, name=f"{name}.fc2")], f"{name}.hsigmoid", alpha=1.0 / 6, beta=0.5)
        return g.op("Mul", [x, s], f"{name}.scale")

    y = act(g.conv_bn("input", 3, 16, 3, stride=2, name="features.0", act=None), "HS", "features.0")
    cin = 16
    # kernel, expanded, out, squeeze-excite, activation, stride (torchvision's mobilenet_v3_small)
    config = [(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
              (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
              (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
              (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)]
    for index, (k, hidden, cout, se, kind, stride) in enumerate(config, start=1):
        p = f"features.{index}"
        z = y if hidden == cin else act(g.conv_bn(y, cin, hidden, 1, name=f"{p}.expand", act=None), kind, f"{p}.expand")
        z = act(g.conv_bn(z, hidden, hidden, k, stride, group=hidden, name=f"{p}.dw", act=None), kind, f"{p}.dw")
        if se:
            z = squeeze_excite(z, hidden, f"{p}.se")
        z = g.conv_bn(z, hidden, cout, 1, name=f"{p}.project", act=None, gamma_scale=0.5)
        y = g.op("Add", [z, y], f"{p}.add") if stride == 1 and cin == cout else z
        cin = cout
    y = act(g.conv_bn(y, cin, 576, 1, name="features.12", act=None), "HS", "features.12")
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y], "avgpool")], "flatten", axis=1)
    y = g.op("HardSwish", [g.linear(y, 576, 1024, "classifier.0")], "classifier.1")
    g.rename_output(g.linear(y, 1024, num_classes, "classifier.3"), "logits")
    return g.model([_tensor("input", [1, 3, input_size, input_size])], [_tensor("logits", [1, num_classes])],
                   "mobilenet_v3_shaped")


def _make_divisible(value: int, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "conv_bn_relu": conv_bn_relu,
    "residual_net": residual_net,
    "transformer_block": transformer_block,
    "dynamic_dims_model": dynamic_dims_model,
    "constant_weights_model": constant_weights_model,
    "if_subgraph_model": if_subgraph_model,
    "resnet18_shaped": resnet18_shaped,
    "resnet50_shaped": resnet50_shaped,
    "mobilenet_v2_shaped": mobilenet_v2_shaped,
    "mobilenet_v3_shaped": mobilenet_v3_shaped,
}
