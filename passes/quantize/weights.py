"""Int8 weights for the planned layers: per-channel scales, then rounding that minds the layer's output.

Round to nearest is the baseline. With `gptq`, each layer's input Gram matrix on the calibration
data (collected by stats.py in the one statistics pass, fitted and held-out halves) drives the
GPTQ rounding, kept only where it beats round-to-nearest on the held-out half (then refitted on
all samples). A layer with fewer input rows in a half than input columns (late layers on 7x7
maps) is rounded to nearest: the held-out half cannot judge GPTQ there (EfficientNet-Lite0: GPTQ
on its five such layers measured the same held-out fidelity and cost 2 s more). Bias correction
then shifts each layer's float bias by the mean error its rounded weights make on the layer's
real (float) inputs, from the same statistics.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import const_value
from onnxopt.passes.quantize.calibrators import quantize_weight, weight_scales
from onnxopt.passes.quantize.pairs import PAIR_LIMIT, clip_pairs, kernel_order, pair_safe_scales
from onnxopt.passes.quantize.placement import WeightSpec
from onnxopt.passes.quantize.qdq import QuantWeight
from onnxopt.passes.quantize.rounding import from_matrix_view, gptq, matrix_view
from onnxopt.passes.quantize.stats import NUMPY_THREADS, CalibrationStats


def round_to_nearest(node: gs.Node, spec: WeightSpec, method: str, qmax: int = 127, pairs: bool = False) -> QuantWeight:
    weight = const_value(node.inputs[spec.input_index]).astype(np.float32)
    if not pairs:
        scales = weight_scales(weight, spec.axis, method, qmax)
        return QuantWeight(quantize_weight(weight, scales, spec.axis, qmax), scales, spec.axis)
    layer = _KernelView(node, spec, weight, method, qmax, pairs)
    q = layer.pair_clipped(np.clip(np.round(layer.matrix / layer.row_scales), -qmax, qmax))
    return layer.quant_weight(q)


class _KernelView:
    """A weight as the rows GPTQ rounds (rounding.matrix_view), its per-channel scales, and with
    `pairs` the K order of ORT's int8 kernels, scales raised so adjacent pairs cannot saturate."""

    def __init__(self, node: gs.Node, spec: WeightSpec, weight: np.ndarray, method: str, qmax: int, pairs: bool):
        self.node, self.spec, self.shape = node, spec, weight.shape
        self.groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        self.matrix = matrix_view(weight, node.op, self.groups, spec.transpose).astype(np.float64)
        self.scales = weight_scales(weight, spec.axis, method, qmax)
        self.order = kernel_order(node.op, weight.shape) if pairs else None
        self.pairs = pairs
        if pairs:
            need = pair_safe_scales(self.kernel(self.matrix), self.scales.reshape(self.groups, -1) if spec.axis is not None else self.scales)
            self.scales = (need.reshape(-1) if spec.axis is not None else np.atleast_1d(need.max())).astype(np.float32)

    @property
    def row_scales(self) -> np.ndarray:
        """Scales broadcast against the matrix: (groups, out, 1)."""
        if self.spec.axis is None:
            return np.full((1, 1, 1), float(self.scales.reshape(-1)[0]))
        return self.scales.reshape(self.groups, -1, 1).astype(np.float64)

    def kernel(self, matrix: np.ndarray) -> np.ndarray:
        return matrix if self.order is None else matrix[..., self.order]

    def from_kernel(self, matrix: np.ndarray) -> np.ndarray:
        if self.order is None:
            return matrix
        out = np.empty_like(matrix)
        out[..., self.order] = matrix
        return out

    def pair_clipped(self, q: np.ndarray) -> np.ndarray:
        return self.from_kernel(clip_pairs(self.kernel(q))) if self.pairs else q

    def quant_weight(self, q: np.ndarray) -> QuantWeight:
        values = from_matrix_view(q, self.shape, self.node.op, self.spec.transpose).astype(np.int8)
        return QuantWeight(values, self.scales, self.spec.axis)


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
    pairs: frozenset[str] = frozenset(),
) -> tuple[dict[str, QuantWeight], dict[str, str]]:
    """GPTQ-rounded int8 weights for the nodes in `specs` (from the Gram matrices in `stats`), and
    per node which rounding won; `qmax` bounds a node's integers (127 unless given), nodes in
    `pairs` keep adjacent pairs saturation-free (pairs.py)."""
    nodes = {n.name: n for n in graph.nodes}

    def one(name: str) -> tuple[QuantWeight, str]:
        spec, layer, bound = specs[name], stats.layers.get(name), (qmax or {}).get(name, 127)
        too_few_rows = layer is not None and (layer.too_few_rows or (layer.fit is not None and min(layer.fit_rows, layer.held_out_rows) < layer.fit.shape[-1]))
        if too_few_rows:
            return (round_to_nearest(nodes[name], spec, scale_method, bound, name in pairs),
                    "nearest (fewer calibration rows than inputs: GPTQ would fit directions no sample shows)")
        if layer is None or layer.fit is None or not gptq_ready(nodes[name], spec, max_columns):
            return round_to_nearest(nodes[name], spec, scale_method, bound, name in pairs), "nearest (GPTQ does not apply)"
        return _validated_gptq(nodes[name], spec, layer.fit, layer.held_out, scale_method, damps, bound, name in pairs)

    with ThreadPoolExecutor(NUMPY_THREADS) as pool:  # layers side by side: numpy's factorizations and products release the GIL
        done = dict(zip(specs, pool.map(one, specs)))
    return {name: d[0] for name, d in done.items()}, {name: d[1] for name, d in done.items()}


def _output_error(matrix: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """||X (W - W_hat)||^2 summed over output channels, from the Gram matrix of X."""
    d = matrix - approx
    return float(np.sum(np.matmul(d, hessian) * d))


def _validated_gptq(node, spec, h_fit, h_val, scale_method, damps, qmax=127, pairs=False) -> tuple[QuantWeight, str]:
    """GPTQ with the damping that generalizes, or round to nearest when GPTQ does not.

    GPTQ fitted on half the calibration samples is scored on the other half: where the inputs
    span too few directions (late layers on small feature maps) it overfits, pushing error into
    directions it never saw, and plain rounding wins. The winner is refitted on all samples.
    With `pairs`, GPTQ runs in the kernel's K order so it can keep adjacent pairs bounded.
    """
    weight = const_value(node.inputs[spec.input_index]).astype(np.float32)
    layer = _KernelView(node, spec, weight, scale_method, qmax, pairs)
    matrix, s = layer.matrix, layer.row_scales
    limit = PAIR_LIMIT if pairs else None

    def rounded(hessian, damp):
        h = hessian if layer.order is None else hessian[:, layer.order][:, :, layer.order]
        q = gptq(layer.kernel(matrix), s[..., 0], h, damp=damp, qmax=qmax, pair_limit=limit)
        return layer.from_kernel(clip_pairs(q) if pairs else q)

    nearest = layer.pair_clipped(np.clip(np.round(matrix / s), -qmax, qmax))
    choice, best = "nearest", None
    if h_val is not None:
        best = _output_error(matrix, nearest * s, h_val)
        for damp in damps:
            err = _output_error(matrix, rounded(h_fit, damp) * s, h_val)
            if err < best:
                choice, best = f"gptq damp {damp:g}", err
    if choice == "nearest" and h_val is not None:
        q = nearest
    else:
        damp = float(choice.rsplit(" ", 1)[1]) if choice != "nearest" else damps[0]
        choice = f"gptq damp {damp:g}"
        q = rounded(h_fit + (h_val if h_val is not None else 0), damp)
    return layer.quant_weight(q), choice


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
