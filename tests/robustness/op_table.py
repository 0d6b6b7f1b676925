"""Single-op models for (nearly) every default-domain ONNX op that onnxruntime's CPU provider runs.

Each entry reads at least one graph input, so no pass may fold it away; constants are initializers.
`build(entry)` returns a checked model whose output types come from onnx shape inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class X:
    """A graph input."""

    shape: tuple
    dtype: Any = np.float32


@dataclass(frozen=True)
class C:
    """A constant input (initializer)."""

    value: Any
    dtype: Any = None

    def array(self) -> np.ndarray:
        return np.asarray(self.value, dtype=self.dtype) if self.dtype is not None else np.asarray(self.value)


@dataclass
class Op:
    op: str
    inputs: list
    attrs: dict = field(default_factory=dict)
    opset: int = 17
    outputs: int = 1
    id: str = ""  # distinguishes several entries of one op

    @property
    def name(self) -> str:
        return self.id or self.op


f = np.float32
i64 = np.int64
F = lambda *shape: X(shape)  # noqa: E731
I = lambda *shape: X(shape, np.int64)  # noqa: E731
B = lambda *shape: X(shape, np.bool_)  # noqa: E731
U8 = lambda *shape: X(shape, np.uint8)  # noqa: E731
rng = np.random.default_rng(0)
W = lambda *shape: C(rng.standard_normal(shape).astype(f))  # noqa: E731
POS = lambda *shape: C((np.abs(rng.standard_normal(shape)) + 0.5).astype(f))  # noqa: E731
INTS = lambda *values: C(list(values), i64)  # noqa: E731
SCALAR = lambda v, t=f: C(np.array(v, dtype=t))  # noqa: E731


def unary(op, **attrs):
    return Op(op, [F(2, 3, 4)], attrs)


UNARY_FLOAT = [
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor",
    "HardSigmoid", "HardSwish", "Identity", "Log", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign",
    "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Celu", "LeakyRelu",
    "Softmax", "LogSoftmax", "Hardmax", "IsNaN", "Shrink",
]
BINARY_FLOAT = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"]

OPS: list[Op] = (
    [unary(op) for op in UNARY_FLOAT]
    + [Op("IsInf", [F(2, 3)]), Op("Mish", [F(2, 3)], opset=18), Op("Gelu", [F(2, 3)], opset=20)]
    + [Op(op, [F(2, 3, 4), F(3, 4)]) for op in BINARY_FLOAT]
    + [
        Op("Mod", [F(2, 3), POS(3)], {"fmod": 1}),
        Op("Mod", [I(2, 3), INTS(2, 3, 5)], id="Mod-int"),
        Op("Div", [I(2, 3), INTS(2, 3, 5)], id="Div-int"),
        Op("PRelu", [F(2, 3, 4), W(3, 1)]),
        Op("Not", [B(2, 3)]),
        Op("And", [B(2, 3), B(2, 3)]),
        Op("Or", [B(2, 3), B(3)]),
        Op("Xor", [B(2, 3), B(2, 3)]),
        Op("BitShift", [U8(2, 3), C([1, 2, 3], np.uint8)], {"direction": "LEFT"}),
        Op("BitwiseAnd", [I(2, 3), INTS(1, 3, 7)], opset=18),
        Op("BitwiseOr", [I(2, 3), INTS(1, 3, 7)], opset=18),
        Op("BitwiseXor", [I(2, 3), INTS(1, 3, 7)], opset=18),
        Op("BitwiseNot", [I(2, 3)], opset=18),
        Op("Clip", [F(2, 3), SCALAR(-0.5), SCALAR(0.5)]),
        Op("Where", [B(2, 3), F(2, 3), W(3)]),
        Op("Expand", [F(3, 1), INTS(2, 3, 4)]),
        Op("Cast", [F(2, 3)], {"to": TensorProto.FLOAT16}),
        Op("CastLike", [F(2, 3), C(np.zeros(1, np.float64))]),
        # NN
        Op("Conv", [F(1, 3, 6, 6), W(4, 3, 3, 3), W(4)], {"pads": [1, 1, 1, 1]}),
        Op("Conv", [F(1, 4, 6, 6), W(4, 1, 3, 3)], {"group": 4, "strides": [2, 2]}, id="Conv-depthwise"),
        Op("ConvTranspose", [F(1, 3, 4, 4), W(3, 2, 3, 3)], {"strides": [2, 2]}),
        Op("ConvInteger", [U8(1, 2, 4, 4), C(np.ones((2, 2, 2, 2), np.uint8))]),
        Op("MaxPool", [F(1, 2, 6, 6)], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Op("AveragePool", [F(1, 2, 6, 6)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}),
        Op("LpPool", [F(1, 2, 6, 6)], {"kernel_shape": [2, 2], "p": 2}),
        Op("GlobalAveragePool", [F(1, 3, 4, 4)]),
        Op("GlobalMaxPool", [F(1, 3, 4, 4)]),
        Op("GlobalLpPool", [F(1, 3, 4, 4)]),
        Op("MaxUnpool", [F(1, 1, 2, 2), C(np.array([[[[0, 3], [8, 15]]]], i64))], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Op("BatchNormalization", [F(2, 3, 4, 4), POS(3), W(3), W(3), POS(3)]),
        Op("InstanceNormalization", [F(2, 3, 4, 4), POS(3), W(3)]),
        Op("LayerNormalization", [F(2, 3, 4), POS(4), W(4)]),
        Op("GroupNormalization", [F(2, 4, 3, 3), POS(4), W(4)], {"num_groups": 2}, opset=21),
        Op("LRN", [F(1, 4, 3, 3)], {"size": 3}),
        Op("LpNormalization", [F(2, 3)], {"axis": -1, "p": 2}),
        Op("MeanVarianceNormalization", [F(2, 3, 4, 4)]),
        Op("Dropout", [F(2, 3)]),
        Op("Gemm", [F(2, 3), W(4, 3), W(4)], {"transB": 1, "alpha": 0.5}),
        Op("MatMul", [F(2, 3, 4), W(4, 5)]),
        Op("MatMulInteger", [U8(2, 3), C(np.ones((3, 4), np.uint8))]),
        Op("QuantizeLinear", [F(2, 3), SCALAR(0.05), C(np.array(0, np.uint8))]),
        Op("DequantizeLinear", [U8(2, 3), SCALAR(0.05), C(np.array(3, np.uint8))]),
        Op("DynamicQuantizeLinear", [F(2, 3)], outputs=3),
        Op("QLinearMatMul", [U8(2, 3), SCALAR(0.1), C(np.array(0, np.uint8)), C(np.ones((3, 2), np.uint8)), SCALAR(0.1), C(np.array(0, np.uint8)), SCALAR(0.2), C(np.array(0, np.uint8))]),
        Op("QLinearConv", [U8(1, 2, 4, 4), SCALAR(0.1), C(np.array(0, np.uint8)), C(np.ones((2, 2, 1, 1), np.uint8)), SCALAR(0.1), C(np.array(0, np.uint8)), SCALAR(0.2), C(np.array(0, np.uint8))]),
        Op("Resize", [F(1, 2, 3, 3), C(np.array([], f)), C(np.array([1, 1, 2, 2], f))], {"mode": "linear"}),
        Op("Resize", [F(1, 2, 3, 3), C(np.array([], f)), C(np.array([1, 1, 2, 2], f))], {"mode": "nearest"}, id="Resize-nearest"),
        Op("DepthToSpace", [F(1, 4, 2, 2)], {"blocksize": 2}),
        Op("SpaceToDepth", [F(1, 1, 4, 4)], {"blocksize": 2}),
        Op("GridSample", [F(1, 1, 4, 4), C(np.clip(rng.standard_normal((1, 3, 3, 2)), -1, 1).astype(f))], opset=16),
        Op("AffineGrid", [F(1, 2, 3), INTS(1, 1, 3, 3)], opset=20),
        Op("Einsum", [F(2, 3), F(3, 4)], {"equation": "ij,jk->ik"}),
        Op("Col2Im", [F(1, 4, 4), INTS(3, 3), INTS(2, 2)], opset=18),
        Op("RoiAlign", [F(1, 2, 6, 6), C(np.array([[0, 0, 3, 3], [1, 1, 5, 5]], f)), C(np.array([0, 0], i64))], {"output_height": 2, "output_width": 2}),
        Op("MaxRoiPool", [F(1, 2, 6, 6), C(np.array([[0, 0, 0, 3, 3]], f))], {"pooled_shape": [2, 2]}),
        Op("CenterCropPad", [F(4, 5), INTS(3, 6)], opset=18),
        # tensor manipulation
        Op("Reshape", [F(2, 3, 4), INTS(6, -1)]),
        Op("Transpose", [F(2, 3, 4)], {"perm": [2, 0, 1]}),
        Op("Concat", [F(2, 3), W(2, 2)], {"axis": 1}),
        Op("Split", [F(2, 6), INTS(2, 4)], {"axis": 1}, outputs=2),
        Op("Split", [F(2, 6)], {"axis": 1, "num_outputs": 3}, opset=18, outputs=3, id="Split-num-outputs"),
        Op("Slice", [F(4, 5), INTS(1, 0), INTS(3, 5), INTS(0, 1), INTS(1, 2)]),
        Op("Gather", [F(4, 3), INTS(0, 3, -1)], {"axis": 0}),
        Op("GatherElements", [F(3, 3), C(np.array([[0, 1, 2], [2, 0, 1]], i64))], {"axis": 0}),
        Op("GatherND", [F(2, 2), C(np.array([[0, 0], [1, 1]], i64))]),
        Op("ScatterElements", [F(3, 3), C(np.array([[1, 0, 2]], i64)), W(1, 3)], {"axis": 0}),
        Op("ScatterElements", [F(3, 3), C(np.array([[1, 0, 2]], i64)), W(1, 3)], {"axis": 0, "reduction": "max"}, opset=18, id="ScatterElements-max"),
        Op("ScatterND", [F(4, 3), C(np.array([[1], [3]], i64)), W(2, 3)]),
        Op("Squeeze", [F(2, 1, 3), INTS(1)]),
        Op("Unsqueeze", [F(2, 3), INTS(0, 3)]),
        Op("Flatten", [F(2, 3, 4)], {"axis": 2}),
        Op("Tile", [F(2, 3), INTS(2, 1)]),
        Op("Pad", [F(2, 3), INTS(0, 1, 1, 2)], {"mode": "constant"}),
        Op("Pad", [F(2, 3), INTS(1, 1, 1, 1)], {"mode": "reflect"}, id="Pad-reflect"),
        Op("Shape", [X(("N", 3, 4))]),  # a static shape would rightly fold to a constant
        Op("Size", [F(2, 3, 4)]),
        Op("ConstantOfShape", [I(2)], {"value": numpy_helper.from_array(np.array([1.5], f))}),
        Op("Range", [SCALAR(0.0), X((), np.float32), SCALAR(0.25)], id="Range"),
        Op("OneHot", [I(2, 3), INTS(4), C(np.array([0.0, 1.0], f))]),
        Op("TopK", [F(3, 5), INTS(2)], outputs=2),
        Op("ArgMax", [F(3, 4)], {"axis": 1}),
        Op("ArgMin", [F(3, 4)], {"axis": 0, "keepdims": 0}),
        Op("CumSum", [F(3, 4), SCALAR(1, i64)]),
        Op("ReverseSequence", [F(3, 4), INTS(2, 1, 3, 3)], {"batch_axis": 1, "time_axis": 0}),
        Op("Compress", [F(3, 4), C(np.array([True, False, True]))], {"axis": 0}),
        Op("Trilu", [F(4, 4), SCALAR(1, i64)], {"upper": 0}),
        Op("Unique", [F(6)], {"sorted": 1}, outputs=4),
        Op("EyeLike", [F(3, 4)]),
        Op("NonZero", [I(2, 3)]),
        Op("NonMaxSuppression", [F(1, 3, 4), F(1, 1, 3), INTS(2), SCALAR(0.5), SCALAR(-10.0)]),
        Op("Det", [F(2, 3, 3)]),
        Op("Identity", [I(2, 3)], id="Identity-int"),
        Op("OptionalHasElement", [F(2, 3)], opset=18),
        # reductions (opset 18: axes as an input)
        *[Op(op, [F(2, 3, 4), INTS(1)], {"keepdims": 1}, opset=18) for op in (
            "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")],
        Op("ReduceMean", [F(2, 3, 4)], {"axes": [1, 2], "keepdims": 0}, id="ReduceMean-opset13", opset=13),
        # recurrent
        Op("LSTM", [F(2, 1, 3), W(1, 8, 3), W(1, 8, 2), W(1, 16)], {"hidden_size": 2}, outputs=3),
        Op("GRU", [F(2, 1, 3), W(1, 6, 3), W(1, 6, 2), W(1, 12)], {"hidden_size": 2}, outputs=2),
        Op("RNN", [F(2, 1, 3), W(1, 2, 3), W(1, 2, 2)], {"hidden_size": 2}, outputs=2),
        # signal
        Op("DFT", [F(1, 8, 1), None, SCALAR(1, i64)], opset=20),
        Op("STFT", [F(1, 16), SCALAR(4, i64), C(np.hanning(8).astype(f))], opset=17),
        Op("HannWindow", [X((), np.int64)], opset=17),
        Op("HammingWindow", [X((), np.int64)], opset=17),
        Op("BlackmanWindow", [X((), np.int64)], opset=17),
        # sequences
        Op("SequenceConstruct+ConcatFromSequence", [F(2, 3), F(2, 3)], id="sequences"),
        Op("SplitToSequence+SequenceAt", [F(4, 3)], id="split-to-sequence"),
        # text and hashing
        Op("TfIdfVectorizer", [I(2, 4)], {"mode": "TF", "min_gram_length": 1, "max_gram_length": 1, "max_skip_count": 0,
                                          "ngram_counts": [0], "ngram_indexes": [0, 1], "pool_int64s": [0, 1]}),
        # random: shapes only (verification is skipped for them)
        Op("RandomNormalLike", [F(2, 3)], {"seed": 1.0}),
        Op("RandomUniformLike", [F(2, 3)], {"seed": 1.0}),
        Op("Bernoulli", [X((2, 3), np.float32)], {"seed": 1.0}),
        Op("Multinomial", [F(2, 3)], {"sample_size": 4, "seed": 1.0}),
    ]
)

RANDOM_OPS = {"RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"}
REMOVABLE = {"Identity", "Dropout"}  # inference no-ops the cleanup may drop


def _composite_nodes(entry: Op, inputs: list[str]) -> list[onnx.NodeProto]:
    if entry.name == "sequences":
        return [
            helper.make_node("SequenceConstruct", inputs, ["seq"]),
            helper.make_node("SequenceInsert", ["seq", inputs[0]], ["seq2"]),
            helper.make_node("SequenceErase", ["seq2", "zero"], ["seq3"]),
            helper.make_node("ConcatFromSequence", ["seq3"], ["y0"], axis=0),
            helper.make_node("SequenceLength", ["seq3"], ["y1"]),
        ]
    return [
        helper.make_node("SplitToSequence", inputs, ["seq"], axis=0),
        helper.make_node("SequenceAt", ["seq", "zero"], ["y0"]),
    ]


def build(entry: Op) -> onnx.ModelProto:
    inputs, graph_inputs, initializers = [], [], []
    for k, spec in enumerate(entry.inputs):
        if spec is None:
            inputs.append("")
        elif isinstance(spec, X):
            name = f"in{k}"
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(spec.shape)))
            inputs.append(name)
        else:
            name = f"c{k}"
            initializers.append(numpy_helper.from_array(spec.array(), name))
            inputs.append(name)
    if "+" in entry.op:
        nodes = _composite_nodes(entry, inputs)
        initializers.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
        outputs = [o for n in nodes for o in n.output if o.startswith("y")]
    else:
        outputs = [f"y{k}" for k in range(entry.outputs)]
        nodes = [helper.make_node(entry.op, inputs, outputs, name=entry.op.lower(), **entry.attrs)]
    graph = helper.make_graph(nodes, entry.name, graph_inputs, [], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", entry.opset)])
    model.ir_version = 10
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi for vi in inferred.graph.value_info}
    for name in outputs:
        vi = types.get(name) or helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # ops onnx cannot infer
        if not vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.shape.SetInParent()  # rank unknown
        model.graph.output.append(vi)
    onnx.checker.check_model(model)
    return model
