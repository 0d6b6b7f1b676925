"""TensorRT's explicit-quantization rules as a checker of an ONNX model.

TensorRT builds an int8 engine from Q/DQ only when they follow its rules; a model that breaks
them builds in float or fails. Checked here: int8 with zero point 0 everywhere (symmetric);
per-channel weight scales on the output-channel axis (0 for Conv and Gemm with transB=1,
1 for ConvTranspose, Gemm with transB=0 and MatMul); a quantized weight's layer reads a
quantized activation; Q and its DQ agree; one scale across a Concat; no DQ on graph outputs.
Returns the violations as sentences; an empty list means the model passes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}


def check_trt_qdq(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {o: n for n in graph.node for o in n.output}
    problems: list[str] = []

    def scale_of(node: onnx.NodeProto) -> np.ndarray | None:
        return inits.get(node.input[1])

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            if node.op_type == "QuantizeLinear":
                problems.append(f"{node.name}: QuantizeLinear without an int8 zero point (defaults to uint8)")
        elif zero.dtype != np.int8 and not (node.op_type == "DequantizeLinear" and zero.dtype == np.int32):
            problems.append(f"{node.name}: zero point is {zero.dtype}, TensorRT wants int8")
        elif np.any(zero != 0):
            problems.append(f"{node.name}: zero point is not 0 (TensorRT quantization is symmetric)")
        scale = scale_of(node)
        if scale is None:
            problems.append(f"{node.name}: scale is not a constant")
        elif not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            problems.append(f"{node.name}: scale must be positive and finite")
        if node.op_type == "DequantizeLinear" and node.input[0] in producer:
            q = producer[node.input[0]]
            if q.op_type == "QuantizeLinear" and (q.input[1] != node.input[1] and not np.array_equal(inits.get(q.input[1]), scale)):
                problems.append(f"{node.name}: its QuantizeLinear {q.name} uses another scale")

    outputs = {o.name for o in graph.output}
    for name in outputs:
        if name in producer and producer[name].op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems.append(f"graph output {name} comes from {producer[name].op_type}: no Q/DQ on graph outputs")

    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = producer.get(node.input[1])
        if w is None or w.op_type != "DequantizeLinear" or w.input[0] not in inits:
            continue
        weight = inits[w.input[0]]
        scale = scale_of(w)
        if scale is not None and scale.size > 1:
            axis = next((a.i for a in w.attribute if a.name == "axis"), 1)
            axis = axis + weight.ndim if axis < 0 else axis
            if node.op_type == "Gemm":
                expected = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
            else:
                expected = WEIGHT_AXIS[node.op_type]
            if axis != expected:
                problems.append(f"{node.name}: weight scales on axis {axis}, TensorRT wants the output-channel axis {expected}")
        x = producer.get(node.input[0])
        if x is None or x.op_type != "DequantizeLinear":
            problems.append(f"{node.name}: int8 weights but a float activation input (no Q/DQ on input 0)")

    quantizers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            quantizers.setdefault(node.input[0], []).append(node)
    for node in graph.node:
        if node.op_type != "Concat":
            continue
        scales = {
            float(np.asarray(scale_of(q)).reshape(-1)[0])
            for name in list(node.input) + list(node.output)
            for q in quantizers.get(name, [])
            if scale_of(q) is not None
        }
        if len(scales) > 1:
            problems.append(f"{node.name}: tensors around this Concat are quantized with different scales {sorted(scales)}")
    return problems
