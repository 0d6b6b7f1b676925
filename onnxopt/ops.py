"""One table of ONNX op families that every rule reads (like tinygrad's GroupOp).

Rules decide by family ("an elementwise op passes channels through", "a reshape-like op moves
values without arithmetic"), so a new op is taught to every pass in one place. Families are
frozensets of default-domain op types; a rule that needs a narrower set derives it here, with the
reason, instead of keeping its own list.
"""

from __future__ import annotations

# -- elementwise ---------------------------------------------------------------------------------
# One data input, output of the same shape, each element from the element at the same index.
UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Sin", "Cos", "Gelu", "Mish", "Clip", "Identity", "Dropout", "Cast", "ThresholdedRelu", "Shrink",
})
# Numeric elementwise ops over broadcast inputs: a channel axis passes through them unchanged.
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Mod"})
COMPARISON = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"})
LOGICAL = frozenset({"And", "Or", "Xor"})
# Every op with numpy-style (multidirectional) broadcasting: output dims follow the inputs' dims.
# Comparisons and logic are left out of ELEMENTWISE because they produce booleans, not channels.
BROADCASTING = ELEMENTWISE | COMPARISON | LOGICAL | {"BitShift"}

# -- layers with weights -------------------------------------------------------------------------
CONV = frozenset({"Conv", "ConvTranspose"})
MATMUL = frozenset({"Gemm", "MatMul"})
LINEAR = CONV | MATMUL  # float layers that multiply by a weight: what int8 quantizes and MACs count
QUANTIZED_LINEAR = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
MAC = LINEAR | QUANTIZED_LINEAR
# Layers whose weight's output channels a least-squares refit or a pruner can cut directly;
# ConvTranspose stores them on axis 1 of (C_in, C_out/group, ...) and is left out on purpose.
REFITTABLE = LINEAR - {"ConvTranspose"}

# -- pooling, reductions, normalization ----------------------------------------------------------
POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
REDUCE = frozenset({
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
})
# Reductions that accumulate (sums, products, norms) and so can overflow float16; Max and Min cannot.
ACCUMULATING_REDUCE = REDUCE - {"ReduceMax", "ReduceMin"}
NORMALIZATION = frozenset({"BatchNormalization", "LayerNormalization"})
SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})

# -- layout --------------------------------------------------------------------------------------
# Ops that only reshape: same elements in the same order.
RESHAPE_LIKE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
# Ops whose output has the rank of their first input.
SAME_RANK = UNARY | POOL | CONV | NORMALIZATION | SOFTMAX | {"Slice", "Pad", "Resize"}

# -- quantization --------------------------------------------------------------------------------
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Ops that move or select values without arithmetic, so they commute with (monotonic) quantization:
# an int8 runtime can run them on the quantized tensor.
QUANT_TRANSPARENT = RESHAPE_LIKE | {"Transpose", "MaxPool"}

# -- outputs not fixed by the inputs -------------------------------------------------------------
# Random ops: two runs differ, so they are never deduplicated, removed or compared numerically.
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
# Ops whose output element type is set by an attribute or a zero point, not by their data input.
TYPE_FROM_ATTRIBUTE = (
    NONDETERMINISTIC | QDQ | {"Cast", "Constant", "ConstantOfShape", "EyeLike", "DynamicQuantizeLinear"}
)
