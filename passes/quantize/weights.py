"""Int8 weights for the planned layers: per-channel scales, then rounding that minds the layer's output.

Round to nearest is the baseline. With `gptq`, each layer's inputs on the calibration data
(captured from the float model, a random subset of rows per sample) give the Gram matrix the
GPTQ rounding needs; layers are processed in chunks whose Gram matrices fit a memory budget, so
a large model costs more passes over the data, never more memory. Bias correction then shifts
each layer's float bias by the mean output error the quantized model still makes, measured
against the float model on the calibration data, a few rounds since corrections interact.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.graphs import const_value
from onnxopt.passes.quantize.calibrators import quantize_weight, weight_scales
from onnxopt.passes.quantize.collect import progress_bar
from onnxopt.passes.quantize.placement import WeightSpec
from onnxopt.passes.quantize.qdq import QuantWeight
from onnxopt.passes.quantize.rounding import from_matrix_view, gptq, matrix_view
from onnxopt.passes.reconstruct import with_outputs, gram, layer_input_rows
from onnxopt.runtime import make_session


def round_to_nearest(node: gs.Node, spec: WeightSpec, method: str) -> QuantWeight:
    weight = const_value(node.inputs[spec.input_index]).astype(np.float32)
    scales = weight_scales(weight, spec.axis, method)
    return QuantWeight(quantize_weight(weight, scales, spec.axis), scales, spec.axis)


def _gptq_ready(node: gs.Node, spec: WeightSpec, max_columns: int) -> bool:
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


def _gram_bytes(node: gs.Node, spec: WeightSpec) -> int:
    shape = node.inputs[spec.input_index].shape
    if node.op == "Conv":
        groups = int(node.attrs.get("group", 1))
        k = int(np.prod(shape[1:]))
        return groups * k * k * 8
    k = int(shape[0] if spec.transpose else shape[1])
    return k * k * 8


def gptq_weights(
    float_model: onnx.ModelProto,
    graph: gs.Graph,
    specs: dict[str, WeightSpec],
    data: Iterable[dict],
    *,
    scale_method: str = "mse",
    max_columns: int = 4608,
    rows_per_sample: int = 2048,
    memory_budget: int = 128 << 20,
    damps: tuple[float, ...] = (0.01, 0.1),
    seed: int = 0,
) -> tuple[dict[str, QuantWeight], dict[str, str]]:
    """GPTQ-rounded int8 weights for the nodes in `specs`, and per node which rounding won."""
    nodes = {n.name: n for n in graph.nodes}
    result: dict[str, QuantWeight] = {}
    choices: dict[str, str] = {}
    ready = []
    for name, spec in specs.items():
        if _gptq_ready(nodes[name], spec, max_columns):
            ready.append(name)
        else:
            result[name] = round_to_nearest(nodes[name], spec, scale_method)
            choices[name] = "nearest (GPTQ does not apply)"
    chunks, current, used = [], [], 0
    for name in ready:
        size = 2 * _gram_bytes(nodes[name], specs[name])  # fitted and held-out halves
        if current and used + size > memory_budget:
            chunks.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        chunks.append(current)
    rng = np.random.default_rng(seed)
    for chunk in chunks:
        inputs = {name: nodes[name].inputs[0].name for name in chunk}
        tensor_names = list(dict.fromkeys(inputs.values()))
        session = make_session(with_outputs(float_model, tensor_names), opt_level="basic")
        fit: dict[str, np.ndarray] = {}
        held_out: dict[str, np.ndarray] = {}
        progress = progress_bar()
        with progress:
            task = progress.add_task(f"GPTQ statistics ({len(chunk)} layers)", total=data.known_length() if hasattr(data, "known_length") else None)
            for i, feeds in enumerate(data):
                values = dict(zip(tensor_names, session.run(tensor_names, feeds)))
                bucket = fit if i % 2 == 0 else held_out
                for name in chunk:
                    node = nodes[name]
                    rows = layer_input_rows(values[inputs[name]], node.op, node.attrs, tuple(node.inputs[1].shape), max_rows=rows_per_sample, rng=rng)
                    h = gram(rows)
                    bucket[name] = bucket[name] + h if name in bucket else h
                progress.advance(task)
        del session
        for name in chunk:
            result[name], choices[name] = _validated_gptq(nodes[name], specs[name], fit.pop(name), held_out.pop(name, None), scale_method, damps)
    return result, choices


def _output_error(matrix: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """||X (W - W_hat)||^2 summed over output channels, from the Gram matrix of X."""
    d = matrix - approx
    return float(np.sum(np.matmul(d, hessian) * d))


def _validated_gptq(node, spec, h_fit, h_val, scale_method, damps) -> tuple[QuantWeight, str]:
    """GPTQ with the damping that generalizes, or round to nearest when GPTQ does not.

    GPTQ fitted on half the calibration samples is scored on the other half: where the inputs
    span too few directions (late layers on small feature maps) it overfits, pushing error into
    directions it never saw, and plain rounding wins. The winner is refitted on all samples.
    """
    weight = const_value(node.inputs[spec.input_index]).astype(np.float32)
    scales = weight_scales(weight, spec.axis, scale_method)
    groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
    matrix = matrix_view(weight, node.op, groups, spec.transpose).astype(np.float64)
    s = scales.reshape(groups, -1, 1).astype(np.float64)
    nearest = np.clip(np.round(matrix / s), -127, 127)
    choice, best = "nearest", None
    if h_val is not None:
        best = _output_error(matrix, nearest * s, h_val)
        for damp in damps:
            err = _output_error(matrix, gptq(matrix, s[..., 0], h_fit, damp=damp) * s, h_val)
            if err < best:
                choice, best = f"gptq damp {damp:g}", err
    if choice == "nearest" and h_val is not None:
        q = nearest
    else:
        damp = float(choice.rsplit(" ", 1)[1]) if choice != "nearest" else damps[0]
        choice = f"gptq damp {damp:g}"
        q = gptq(matrix, s[..., 0], h_fit + (h_val if h_val is not None else 0), damp=damp)
    values = from_matrix_view(q, weight.shape, node.op, spec.transpose).astype(np.int8)
    return QuantWeight(values, scales, spec.axis), choice


def bias_corrections(
    student: onnx.ModelProto, graph: gs.Graph, specs: dict[str, WeightSpec], weights: dict[str, QuantWeight], data: Iterable[dict]
) -> dict[str, np.ndarray]:
    """Per node, the bias shift E[(W - W_hat) x] that removes the mean error its int8 weights add.

    x is the layer's input in the quantized model itself, so each shift is the layer's own error
    only: shifts measured against the float model's outputs would also carry every upstream
    layer's error, and correcting all layers at once would count that error many times over.
    """
    nodes = {n.name: n for n in graph.nodes}
    student_inputs = _node_inputs(student, specs)
    names = list(dict.fromkeys(student_inputs.values()))
    session = make_session(with_outputs(student, names), opt_level="disable")
    sums: dict[str, np.ndarray] = {}
    rows_seen: dict[str, int] = {}
    for feeds in data:
        values = dict(zip(names, session.run(names, feeds)))
        for name, tensor in student_inputs.items():
            node = nodes[name]
            rows = layer_input_rows(values[tensor], node.op, node.attrs, tuple(node.inputs[1].shape)).astype(np.float64)
            sums[name] = sums.get(name, 0.0) + rows.sum(axis=0)
            rows_seen[name] = rows_seen.get(name, 0) + rows.shape[0]
    shifts = {}
    for name, spec in specs.items():
        if name not in sums:
            continue
        node = nodes[name]
        weight = const_value(node.inputs[spec.input_index]).astype(np.float64)
        groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        error = matrix_view(weight - weights[name].dequantized(), node.op, groups, spec.transpose)
        mean = sums[name] / rows_seen[name]  # (groups, K)
        shifts[name] = np.matmul(error, mean[:, :, None])[..., 0].reshape(-1).astype(np.float32)
    return shifts


def _node_inputs(model: onnx.ModelProto, specs: dict[str, WeightSpec]) -> dict[str, str]:
    return {n.name: n.input[0] for n in model.graph.node if n.name in specs}
