"""Int8 weights for the planned layers: per-channel scales, then rounding that minds the layer's output.

Round to nearest is the baseline. With `gptq`, each layer's input Gram matrix on the calibration
data (collected by stats.py in the one statistics pass, fitted and held-out halves) drives the
GPTQ rounding, kept only where it beats round-to-nearest on the held-out half (then refitted on
all samples). Bias correction then shifts each layer's float bias by the mean error its rounded
weights make on the layer's real (float) inputs, from the same statistics.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import const_value
from onnxopt.passes.quantize.calibrators import quantize_weight, weight_scales
from onnxopt.passes.quantize.placement import WeightSpec
from onnxopt.passes.quantize.qdq import QuantWeight
from onnxopt.passes.quantize.rounding import from_matrix_view, gptq, matrix_view
from onnxopt.passes.quantize.stats import CalibrationStats


def round_to_nearest(node: gs.Node, spec: WeightSpec, method: str, qmax: int = 127) -> QuantWeight:
    weight = const_value(node.inputs[spec.input_index]).astype(np.float32)
    scales = weight_scales(weight, spec.axis, method, qmax)
    return QuantWeight(quantize_weight(weight, scales, spec.axis, qmax), scales, spec.axis)


def gptq_ready(node: gs.Node, spec: WeightSpec, max_columns: int) -> bool:
    if node.op == "Conv":
        w = node.inputs[1]
        if len(w.shape) != 4 or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return False
        k = int(np.prod(w.shape[1:]))
    elif node.op in ("Gemm", "MatMul"):
        k = int(node.inputs[spec.input_index].shape[1 if not spec.transpose else 0])
    else:
        return False
    return spec.axis is not None and k <= max_columns


def gptq_weights(
    graph: gs.Graph,
    specs: dict[str, WeightSpec],
    stats: CalibrationStats,
    *,
    scale_method: str = "mse",
    max_columns: int = 4608,
    damps: tuple[float, ...] = (0.01, 0.1),
    qmax: dict[str, int] | None = None,
) -> tuple[dict[str, QuantWeight], dict[str, str]]:
    """GPTQ-rounded int8 weights for the nodes in `specs` (from the Gram matrices in `stats`), and
    per node which rounding won; `qmax` bounds a node's integers (127 unless given)."""
    nodes = {n.name: n for n in graph.nodes}
    result: dict[str, QuantWeight] = {}
    choices: dict[str, str] = {}
    for name, spec in specs.items():
        layer = stats.layers.get(name)
        if layer is None or layer.fit is None or not gptq_ready(nodes[name], spec, max_columns):
            result[name] = round_to_nearest(nodes[name], spec, scale_method, (qmax or {}).get(name, 127))
            choices[name] = "nearest (GPTQ does not apply)"
            continue
        result[name], choices[name] = _validated_gptq(nodes[name], spec, layer.fit, layer.held_out, scale_method, damps, (qmax or {}).get(name, 127))
    return result, choices


def _output_error(matrix: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """||X (W - W_hat)||^2 summed over output channels, from the Gram matrix of X."""
    d = matrix - approx
    return float(np.sum(np.matmul(d, hessian) * d))


def _validated_gptq(node, spec, h_fit, h_val, scale_method, damps, qmax=127) -> tuple[QuantWeight, str]:
    """GPTQ with the damping that generalizes, or round to nearest when GPTQ does not.

    GPTQ fitted on half the calibration samples is scored on the other half: where the inputs
    span too few directions (late layers on small feature maps) it overfits, pushing error into
    directions it never saw, and plain rounding wins. The winner is refitted on all samples.
    """
    weight = const_value(node.inputs[spec.input_index]).astype(np.float32)
    scales = weight_scales(weight, spec.axis, scale_method, qmax)
    groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
    matrix = matrix_view(weight, node.op, groups, spec.transpose).astype(np.float64)
    s = scales.reshape(groups, -1, 1).astype(np.float64)
    nearest = np.clip(np.round(matrix / s), -qmax, qmax)
    choice, best = "nearest", None
    if h_val is not None:
        best = _output_error(matrix, nearest * s, h_val)
        for damp in damps:
            err = _output_error(matrix, gptq(matrix, s[..., 0], h_fit, damp=damp, qmax=qmax) * s, h_val)
            if err < best:
                choice, best = f"gptq damp {damp:g}", err
    if choice == "nearest" and h_val is not None:
        q = nearest
    else:
        damp = float(choice.rsplit(" ", 1)[1]) if choice != "nearest" else damps[0]
        choice = f"gptq damp {damp:g}"
        q = gptq(matrix, s[..., 0], h_fit + (h_val if h_val is not None else 0), damp=damp, qmax=qmax)
    values = from_matrix_view(q, weight.shape, node.op, spec.transpose).astype(np.int8)
    return QuantWeight(values, scales, spec.axis), choice


def bias_corrections(
    graph: gs.Graph, specs: dict[str, WeightSpec], weights: dict[str, QuantWeight], stats: CalibrationStats
) -> dict[str, np.ndarray]:
    """Per node, the bias shift E[(W - W_hat) x] that removes the mean error its int8 weights add.

    x is the layer's float input, whose mean row the statistics pass already holds: no run with
    the quantized model. Each shift is the layer's own error only (shifts measured against the
    float model's outputs would also carry every upstream layer's error, counted many times
    over when all layers are corrected at once).
    """
    nodes = {n.name: n for n in graph.nodes}
    shifts = {}
    for name, spec in specs.items():
        layer = stats.layers.get(name)
        if layer is None or layer.mean is None:
            continue
        node = nodes[name]
        weight = const_value(node.inputs[spec.input_index]).astype(np.float64)
        groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        error = matrix_view(weight - weights[name].dequantized(), node.op, groups, spec.transpose)
        shifts[name] = np.matmul(error, layer.mean[:, :, None])[..., 0].reshape(-1).astype(np.float32)
    return shifts
