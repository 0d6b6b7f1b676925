"""TensorRT readiness: what TensorRT 10's ONNX parser and builder would reject or silently change.

Runs anywhere (onnx and numpy only, no GPU, no tensorrt), before an engine build and as
`onnxopt check-trt MODEL`. Each finding has a severity (error: the build fails or the engine is
wrong; warning: it builds but loses precision or speed; info), a stable code, and a fix.

What it checks, and why:
- ops the parser does not implement (`UNSUPPORTED_OPS`, known no) or that onnxopt does not know
  to be supported (not in `SUPPORTED_OPS`: a warning, the parser is the final word), ops of other
  domains (ORT contrib ops parse only as plugins), opsets outside 9..20;
- int64 constants with values outside int32: TensorRT runs shape and index arithmetic of many
  layers in int32, so such values are clamped (Slice's "to the end" sentinels clamp correctly
  and are not reported); float64 is cast to float32;
- explicit-quantization rules TensorRT imposes on Q/DQ: signed int8, zero point 0 (symmetric),
  constant positive scales, activations per tensor, weights per output channel (Conv axis 0,
  ConvTranspose axis 1, MatMul last axis, Gemm by transB), float biases (no int32 DQ), every
  QuantizeLinear followed by a DequantizeLinear, no Q producing a graph output (a Q/DQ pair ending
  at one is a warning: it rounds the output), and, for int8, that there is any Q/DQ;
- dynamic input dims without an optimization profile (`--input-shape name=min:opt:max`).

`SUPPORTED_OPS` is transcribed from onnx-tensorrt's docs/operators.md for the TensorRT 10 release
line (opsets 9 to 20, default domain); newer 10.x releases add ops, so an op outside both lists is
only a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import ConfigError
from onnxopt.graphs import constant_input_value, import_graph, iter_graphs
from onnxopt.inputs import graph_inputs
from onnxopt.ops import LINEAR, QDQ

MIN_OPSET, MAX_OPSET = 9, 20
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
    CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
    Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
    GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If
    ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
    LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
    RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
    Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
    Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

UNSUPPORTED_OPS = frozenset(
    """
    Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im Compress ConcatFromSequence
    ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
    MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
    OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch STFT SequenceAt SequenceConstruct
    SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss
    SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()
)

# Ops whose tensors are int64 by definition of their indices; a "to the end" sentinel there clamps correctly.
SENTINEL_INT64_CONSUMERS = {"Slice": (1, 2), "Pad": (1,)}
QDQ_OPS = QDQ
INT8 = np.dtype(np.int8)


@dataclass
class Finding:
    severity: str  # "error" | "warning" | "info"
    code: str
    message: str
    fix: str
    node: str | None = None

    def line(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.severity}: {self.code}{where}: {self.message}; {self.fix}"


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    profiles: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, code: str, message: str, fix: str, node: str | None = None) -> None:
        finding = Finding(severity, code, message, fix, node)
        if finding not in self.findings:
            self.findings.append(finding)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "profiles": self.profiles,
            "findings": [asdict(f) for f in self.findings],
        }

    def summary(self) -> str:
        if not self.findings:
            return "TensorRT check: clean"
        head = f"TensorRT check: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        return "\n".join([head] + [f"  {f.line()}" for f in self.findings])


Range = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _declared_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]


def resolve_profiles(model: onnx.ModelProto, ranges: dict[str, Range] | None) -> dict[str, Range]:
    """Check `--input-shape` ranges against the model's inputs; a wrong one is the user's mistake (ConfigError)."""
    ranges = dict(ranges or {})
    inputs = {vi.name: vi for vi in graph_inputs(model)}
    unknown = sorted(set(ranges) - set(inputs))
    if unknown:
        raise ConfigError(f"--input-shape names unknown input(s) {', '.join(unknown)}; inputs are {', '.join(sorted(inputs))}")
    for name, (low, opt, high) in ranges.items():
        dims = _declared_dims(inputs[name])
        if dims is not None and len(dims) != len(opt):
            raise ConfigError(f"--input-shape {name}: the model declares rank {len(dims)}, got {len(opt)}")
        for axis, fixed in enumerate(dims or []):
            if fixed is not None and not (low[axis] == opt[axis] == high[axis] == fixed):
                raise ConfigError(f"--input-shape {name}: dim {axis} is fixed at {fixed} in the model; use {fixed} in min, opt and max")
    return ranges


def _example_range(dims: list[int | None] | None) -> str:
    if not dims:
        return "1x3x224x224:8x3x224x224:32x3x224x224"
    def fill(batch: int, other: int) -> str:
        return "x".join(str(d if d is not None else (batch if axis == 0 else other)) for axis, d in enumerate(dims))
    return f"{fill(1, 32)}:{fill(8, 64)}:{fill(32, 128)}"


def _node_label(node: gs.Node) -> str:
    return node.name or f"{node.op}->{node.outputs[0].name if node.outputs else '?'}"


def _check_opsets(model: onnx.ModelProto, report: CheckReport) -> None:
    for opset in model.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            continue
        if opset.version < MIN_OPSET:
            report.add("error", "opset", f"opset {opset.version} is older than TensorRT 10 parses ({MIN_OPSET})",
                       f"convert with onnx.version_converter.convert_version(model, {MIN_OPSET}) or newer")
        elif opset.version > MAX_OPSET:
            report.add("warning", "opset", f"opset {opset.version} is newer than TensorRT 10.0 documents ({MAX_OPSET})",
                       f"use TensorRT 10.x recent enough for it, or convert to opset {MAX_OPSET}")


def _check_ops(graph: gs.Graph, report: CheckReport) -> None:
    for sub in iter_graphs(graph):
        for node in sub.nodes:
            label = _node_label(node)
            if node.domain not in (None, "", "ai.onnx"):
                report.add("error", "custom-domain-op", f"{node.domain}::{node.op} is not an ONNX op; TensorRT parses it only as a registered plugin",
                           "export without runtime-specific fusions (e.g. onnxruntime's com.microsoft ops) or load a TensorRT plugin of that name", label)
            elif node.op in UNSUPPORTED_OPS:
                report.add("error", "unsupported-op", f"TensorRT 10's ONNX parser does not implement {node.op}",
                           "rewrite it with supported ops, move it out of the model (pre/post-processing), or provide a plugin", label)
            elif node.op not in SUPPORTED_OPS:
                report.add("warning", "unknown-op", f"{node.op} is not in onnxopt's list of ops TensorRT 10 parses",
                           "check onnx-tensorrt's operators.md for your TensorRT version; the parser has the final word", label)
            if node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].outputs:
                report.add("error", "unsupported-op", "MaxPool's Indices output is not supported by TensorRT",
                           "drop the use of the indices (e.g. MaxUnpool) or run that part outside TensorRT", label)


def _check_weights(graph: gs.Graph, report: CheckReport) -> None:
    sentinel_ok: set[int] = set()
    for sub in iter_graphs(graph):
        for node in sub.nodes:
            for index in SENTINEL_INT64_CONSUMERS.get(node.op, ()):
                if index < len(node.inputs):
                    tensor = node.inputs[index]
                    sentinel_ok.add(id(tensor))
                    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
                        sentinel_ok.add(id(tensor.inputs[0].attrs.get("value")))
    seen: set[int] = set()
    for sub in iter_graphs(graph):
        candidates = [t for t in sub.tensors().values() if isinstance(t, gs.Constant)]
        candidates += [n.attrs["value"] for n in sub.nodes if n.op == "Constant" and isinstance(n.attrs.get("value"), gs.Constant)]
        for tensor in candidates:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            values = np.asarray(tensor.values)
            if values.dtype == np.int64 and values.size:
                out = (values < INT32_MIN) | (values > INT32_MAX)
                if id(tensor) in sentinel_ok:
                    continue
                if out.any():
                    report.add("warning", "int64-weight",
                               f"int64 weight {tensor.name} holds {int(out.sum())} value(s) outside int32, which TensorRT clamps where a layer computes in int32",
                               "make the values fit in int32 (e.g. replace huge sentinels by the real dim) before building", tensor.name)
            elif values.dtype == np.float64:
                report.add("warning", "float64-weight", f"float64 weight {tensor.name} is cast to float32 by TensorRT",
                           "store it as float32", tensor.name)


def _check_io(model: onnx.ModelProto, profiles: dict[str, Range], report: CheckReport) -> None:
    for vi in graph_inputs(model):
        elem = vi.type.tensor_type.elem_type
        if elem == onnx.TensorProto.DOUBLE:
            report.add("warning", "float64-io", f"input {vi.name} is float64; TensorRT casts it to float32", "export the input as float32", vi.name)
        if elem == onnx.TensorProto.STRING:
            report.add("error", "string-io", f"input {vi.name} is a string tensor, which TensorRT cannot hold", "tokenize outside the model", vi.name)
        dims = _declared_dims(vi)
        dynamic = dims is None or any(d is None for d in dims)
        if dynamic and vi.name not in profiles:
            report.add("error", "dynamic-shape",
                       f"input {vi.name} has dynamic dims ({_dims_text(vi)}) and no optimization profile",
                       f"pass --input-shape {vi.name}={_example_range(dims)} (min:opt:max, your own ranges)", vi.name)


def _dims_text(vi: onnx.ValueInfoProto) -> str:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return "unknown rank"
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in tt.shape.dim) + "]"


# --- Q/DQ --------------------------------------------------------------------------------------


def _quantized_dtype(node: gs.Node) -> np.dtype | None:
    """The integer type a Q produces or a DQ consumes (QuantizeLinear without a zero point is uint8)."""
    zero_point = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if zero_point is not None:
        zp = constant_input_value(zero_point)
        if zp is not None:
            return zp.dtype
        return np.dtype(zero_point.dtype) if zero_point.dtype is not None else None
    if node.op == "DequantizeLinear":
        x = node.inputs[0]
        value = constant_input_value(x)
        if value is not None:
            return value.dtype
        if x.dtype is not None:
            return np.dtype(x.dtype)
        producer = x.inputs[0] if len(x.inputs) == 1 else None
        return _quantized_dtype(producer) if producer is not None and producer.op == "QuantizeLinear" else None
    output_dtype = node.attrs.get("output_dtype", 0)
    if output_dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(output_dtype))
    return np.dtype(np.uint8)


def _dtype_name(dtype: np.dtype | None) -> str:
    return "unknown" if dtype is None else str(dtype)


def _is_weight_qdq(node: gs.Node) -> bool:
    """A Q/DQ on a constant: DQ(int8 W), or Q(float W) -> DQ, as quantizers emit for weights."""
    x = node.inputs[0]
    if constant_input_value(x) is not None:
        return True
    producer = x.inputs[0] if node.op == "DequantizeLinear" and len(x.inputs) == 1 else None
    return producer is not None and producer.op == "QuantizeLinear" and constant_input_value(producer.inputs[0]) is not None


def _expected_weight_axis(dq: gs.Node) -> list[tuple[str, int | None, int]]:
    """(consumer label, expected axis, weight rank) for each layer that reads this DQ's output as its weight."""
    expected = []
    out = dq.outputs[0]
    rank = len(out.shape) if out.shape is not None else None
    for consumer in out.outputs:
        index = next((i for i, t in enumerate(consumer.inputs) if t is out), None)
        if consumer.op in LINEAR and index == 1:
            if consumer.op == "Conv":
                axis = 0
            elif consumer.op == "ConvTranspose":
                axis = 1
            elif consumer.op == "Gemm":
                axis = 0 if consumer.attrs.get("transB", 0) else 1
            else:
                axis = (rank - 1) if rank else None
            expected.append((_node_label(consumer), axis, rank or 0))
    return expected


def _check_qdq(graph: gs.Graph, report: CheckReport, precision: str | None) -> None:
    qdq_nodes = [n for sub in iter_graphs(graph) for n in sub.nodes if n.op in QDQ_OPS]
    if precision == "int8" and not qdq_nodes:
        report.add("error", "no-qdq", "the model has no QuantizeLinear/DequantizeLinear, so TensorRT 10 (explicit quantization) builds no int8 layer",
                   "quantize it first: onnxopt compile MODEL --target trt-int8 --calib DATA")
    outputs = {id(t) for t in graph.outputs}
    for node in qdq_nodes:
        label = _node_label(node)
        qtype = _quantized_dtype(node)
        if qtype is not None and qtype != INT8:
            if qtype == np.int32 and node.op == "DequantizeLinear" and constant_input_value(node.inputs[0]) is not None:
                report.add("error", "qdq-type", "an int32 DequantizeLinear (a quantized bias): TensorRT's Q/DQ take int8, and it fuses a float bias itself",
                           "keep biases float32 (e.g. onnxruntime's quantizer: extra_options QuantizeBias=False)", label)
            elif str(qtype) in ("float8_e4m3fn", "int4"):
                report.add("warning", "qdq-type", f"{node.op} uses {qtype}, which TensorRT supports only on recent GPUs (FP8) or for weights (INT4)",
                           "use signed int8 unless you target that hardware", label)
            else:
                report.add("error", "qdq-type", f"{node.op} uses {_dtype_name(qtype)}; TensorRT's explicit quantization is signed int8",
                           "quantize to int8 with zero point 0 (symmetric); uint8 activations are not accepted", label)
        scale = constant_input_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if scale is None:
            report.add("error", "qdq-scale", f"{node.op}'s scale is not a constant", "fold the scale into an initializer (constant folding)", label)
        elif not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            report.add("error", "qdq-scale", f"{node.op} has a zero, negative or non-finite scale", "recalibrate: scales must be positive and finite", label)
        zero_point = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if zero_point is not None:
            zp = constant_input_value(zero_point)
            if zp is None:
                report.add("error", "qdq-zero-point", f"{node.op}'s zero point is not a constant", "use a constant zero point of 0", label)
            elif np.any(zp != 0):
                report.add("error", "qdq-asymmetric", f"{node.op} has a nonzero zero point ({_first_nonzero(zp)}); TensorRT quantizes symmetrically",
                           "requantize symmetric: zero point 0, scale = max(|x|) / 127", label)
        if node.attrs.get("block_size", 0):
            report.add("warning", "qdq-blocked", f"{node.op} uses block quantization, which TensorRT supports for INT4 weights only",
                       "use per-channel int8 for this tensor", label)
        if scale is not None and scale.size > 1:
            _check_axis(node, scale, report, label)
        for out in node.outputs:
            if id(out) not in outputs:
                continue
            if node.op == "QuantizeLinear":
                report.add("error", "qdq-output", f"QuantizeLinear produces the graph output {out.name}: an int8 output with no DequantizeLinear to fuse with",
                           "end the graph in float: drop the Q (or add its DequantizeLinear)", label)
            else:
                report.add("warning", "qdq-output", f"a Q/DQ pair ends at the graph output {out.name}: the output is rounded to int8 steps and TensorRT runs it as separate quantize/dequantize layers",
                           "drop the trailing Q/DQ so the last layer returns float", label)
        if node.op == "QuantizeLinear":
            for consumer in node.outputs[0].outputs:
                if consumer.op != "DequantizeLinear":
                    report.add("error", "qdq-unpaired", f"QuantizeLinear feeds {consumer.op}, not DequantizeLinear; TensorRT needs Q followed by DQ",
                               "insert the matching DequantizeLinear (same scale) after the Q", label)
                else:
                    dq_scale = constant_input_value(consumer.inputs[1]) if len(consumer.inputs) > 1 else None
                    if scale is not None and dq_scale is not None and (scale.shape != dq_scale.shape or not np.allclose(scale, dq_scale)):
                        report.add("warning", "qdq-scale-mismatch", "a Q/DQ pair uses different scales, so TensorRT requantizes between them",
                                   "give the pair the same scale", label)


def _first_nonzero(values: np.ndarray) -> Any:
    flat = np.asarray(values).ravel()
    return flat[np.flatnonzero(flat)[0]].item()


def _check_axis(node: gs.Node, scale: np.ndarray, report: CheckReport, label: str) -> None:
    axis = int(node.attrs.get("axis", 1))
    x = node.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    weight = constant_input_value(x)
    if weight is None and len(x.inputs) == 1 and x.inputs[0].op == "QuantizeLinear":
        weight = constant_input_value(x.inputs[0].inputs[0])
    if rank is None and weight is not None:
        rank = weight.ndim
    if rank:
        axis = axis % rank
    if not _is_weight_qdq(node):
        report.add("error", "qdq-per-channel-activation", f"{node.op} quantizes an activation per channel ({scale.size} scales); TensorRT quantizes activations per tensor",
                   "use one scale for activations (per-channel scales are for weights)", label)
        return
    shape = weight.shape if weight is not None else (tuple(x.shape) if x.shape is not None else None)
    if shape is not None and rank and isinstance(shape[axis], (int, np.integer)) and shape[axis] != scale.size:
        report.add("error", "qdq-axis", f"{node.op} has {scale.size} scales but the weight has {shape[axis]} channels on axis {axis}",
                   "give one scale per output channel", label)
    if node.op != "DequantizeLinear":
        return
    for consumer, expected, _ in _expected_weight_axis(node):
        if expected is not None and axis != expected:
            report.add("error", "qdq-axis", f"per-channel weight DequantizeLinear uses axis {axis}, but {consumer} needs its output-channel axis {expected}",
                       f"requantize the weight per channel along axis {expected}", label)


def check_model(
    model: onnx.ModelProto,
    profiles: dict[str, Range] | None = None,
    *,
    precision: str | None = None,
) -> CheckReport:
    """Everything TensorRT 10 would reject or silently change, as findings with fixes.

    `profiles` maps input names to (min, opt, max) shapes; `precision` ("fp32", "fp16", "int8")
    adds target-specific rules (int8 needs Q/DQ). A bad profile raises ConfigError.
    """
    profiles = resolve_profiles(model, profiles)
    report = CheckReport(profiles={k: [list(s) for s in v] for k, v in profiles.items()})
    _check_opsets(model, report)
    _check_io(model, profiles, report)
    graph = import_graph(model)
    _check_ops(graph, report)
    _check_weights(graph, report)
    _check_qdq(graph, report, precision)
    return report
