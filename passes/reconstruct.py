"""Layer-wise reconstruction against the teacher (the original model), shared by the lossy passes.

Pruning, depthwise substitution and quantization all change a layer and then ask the same
question: which weights make this layer's output match the teacher's on calibration data? With
the layer's (student) inputs X and the teacher's outputs Y, the answer is a least-squares fit
(ThiNet, He et al. 2017); when only a per-channel shift is affordable, bias correction (the mean
of the error) is the closed-form special case. This module captures activations and solves those
fits; it knows nothing of any one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.runtime import make_session

Feeds = dict[str, np.ndarray]


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also returns the named intermediate tensors."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {o.name for o in exposed.graph.output}
    infos = {vi.name: vi for vi in exposed.graph.value_info}
    for name in names:
        if name in existing:
            continue
        out = exposed.graph.output.add()
        if name in infos:
            out.CopyFrom(infos[name])
        else:
            out.name = name  # type left empty: onnxruntime infers it
    return exposed


with_outputs = _with_outputs  # public name for the passes that stream activations themselves


def capture(model: onnx.ModelProto, names: list[str], data: Iterable[Feeds], max_samples: int | None = None) -> dict[str, np.ndarray]:
    """Run the model on the data and return each named tensor, samples concatenated on axis 0."""
    session = make_session(_with_outputs(model, list(names)), opt_level="basic")
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i, feeds in enumerate(data):
        if max_samples is not None and i >= max_samples:
            break
        values = session.run(list(names), feeds)
        for name, value in zip(names, values):
            collected[name].append(value)
    return {name: np.concatenate(chunks, axis=0) if chunks else np.empty((0,)) for name, chunks in collected.items()}


def im2col(
    x: np.ndarray,
    kernel: tuple[int, int],
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilations: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """Conv input patches as rows: (N*OH*OW, C*KH*KW), matching an OIHW weight reshaped to (O, C*KH*KW)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    top, left, bottom, right = pads
    if kernel == (1, 1) and tuple(strides) == (1, 1) and not any(pads):  # pointwise: the channels-last view, one copy
        return x.transpose(0, 2, 3, 1).reshape(n * h * w, c)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (h + top + bottom - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + left + right - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            hi, wj = i * dilations[0], j * dilations[1]
            cols[:, :, i, j] = xp[:, :, hi : hi + strides[0] * oh : strides[0], wj : wj + strides[1] * ow : strides[1]]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * kh * kw)


def channels_last_rows(y: np.ndarray) -> np.ndarray:
    """(N, C, ...) activations as rows (N*..., C), the target layout for conv least squares."""
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])


def subsample_rows(*arrays: np.ndarray, max_rows: int = 20000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The same random rows of each array, so big activations stay cheap to fit."""
    rows = arrays[0].shape[0]
    if rows <= max_rows:
        return arrays
    index = np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))
    return tuple(a[index] for a in arrays)


def least_squares(x: np.ndarray, y: np.ndarray, *, fit_bias: bool = True, ridge: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Weights W (in_features, out_features) and bias b minimizing ||x W + b - y||^2 + ridge * scale * ||W||^2.

    The ridge is relative to the mean diagonal of x^T x, so it behaves the same whatever the
    activations' scale, and keeps the solve stable when calibration data is short.
    """
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    if fit_bias:
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - x_mean, y - y_mean
    else:
        xc, yc = x, y
    gram = xc.T @ xc
    scale = float(np.trace(gram)) / max(gram.shape[0], 1) or 1.0
    gram[np.diag_indices_from(gram)] += ridge * scale
    weights = np.linalg.solve(gram, xc.T @ yc)
    bias = (y_mean - x_mean @ weights) if fit_bias else np.zeros(y.shape[1])
    return weights.astype(np.float32), bias.astype(np.float32)


def bias_correction(teacher: np.ndarray, student: np.ndarray, axis: int = 1) -> np.ndarray:
    """Per-channel mean of (teacher - student): add it to the student's bias to remove the shift."""
    reduce_axes = tuple(i for i in range(teacher.ndim) if i != axis)
    return (teacher.astype(np.float64) - student.astype(np.float64)).mean(axis=reduce_axes).astype(np.float32)


def relative_error(reference: np.ndarray, approx: np.ndarray) -> float:
    """||reference - approx|| / ||reference||: the per-layer error budgets are stated in this."""
    denom = float(np.linalg.norm(reference))
    return float(np.linalg.norm(reference - approx)) / denom if denom else float(np.linalg.norm(approx))


# -- streaming statistics and fits (added for pruning and depthwise substitution) ----------------


def channel_energy(model: onnx.ModelProto, axes: dict[str, int], data: Iterable[Feeds], max_samples: int | None = None) -> dict[str, np.ndarray]:
    """Mean square of every channel of the named tensors (channel axis per name), streamed sample by sample."""
    names = list(axes)
    if not names:
        return {}
    session = make_session(_with_outputs(model, names), opt_level="basic")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i, feeds in enumerate(data):
        if max_samples is not None and i >= max_samples:
            break
        for name, value in zip(names, session.run(names, feeds)):
            moved = np.moveaxis(np.asarray(value, dtype=np.float64), axes[name], -1)
            rows = moved.reshape(-1, moved.shape[-1])
            sums[name] = sums.get(name, 0.0) + np.square(rows).sum(axis=0)
            counts[name] = counts.get(name, 0) + rows.shape[0]
    return {name: sums[name] / max(counts[name], 1) for name in sums}


def conv_patches(x: np.ndarray, attrs: dict, kernel: tuple[int, int]) -> np.ndarray:
    """im2col rows of a 2-D Conv input with the node's strides, pads (auto_pad too) and dilations."""
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads_begin.append(small if auto_pad == "SAME_UPPER" else big)
            pads_end.append(big if auto_pad == "SAME_UPPER" else small)
        pads = (pads_begin[0], pads_begin[1], pads_end[0], pads_end[1])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    return im2col(x, kernel, strides, pads, dilations)


class NormalEquations:
    """Accumulates X^T X, X^T Y and sums over batches of rows, so a least-squares fit over much
    calibration data needs memory for the (features x features) Gram matrix only."""

    def __init__(self) -> None:
        self.xtx = self.xty = self.x_sum = self.y_sum = None
        self.yy = 0.0
        self.rows = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x = x.astype(np.float64)
        y = y.astype(np.float64)
        if self.xtx is None:
            self.xtx = np.zeros((x.shape[1], x.shape[1]))
            self.xty = np.zeros((x.shape[1], y.shape[1]))
            self.x_sum = np.zeros(x.shape[1])
            self.y_sum = np.zeros(y.shape[1])
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.x_sum += x.sum(axis=0)
        self.y_sum += y.sum(axis=0)
        self.yy += float(np.square(y).sum())
        self.rows += x.shape[0]

    def merged(self, other: "NormalEquations") -> "NormalEquations":
        total = NormalEquations()
        if self.xtx is None or other.xtx is None:
            source = self if other.xtx is None else other
            total.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in source.__dict__.items()})
            return total
        total.xtx, total.xty = self.xtx + other.xtx, self.xty + other.xty
        total.x_sum, total.y_sum = self.x_sum + other.x_sum, self.y_sum + other.y_sum
        total.yy, total.rows = self.yy + other.yy, self.rows + other.rows
        return total

    def centered(self, fit_bias: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Gram and cross matrices about the means (or raw without a bias), and the means."""
        n = max(self.rows, 1)
        if not fit_bias:
            return self.xtx.copy(), self.xty.copy(), np.zeros(self.xtx.shape[0]), np.zeros(self.xty.shape[1])
        x_mean, y_mean = self.x_sum / n, self.y_sum / n
        return self.xtx - n * np.outer(x_mean, x_mean), self.xty - n * np.outer(x_mean, y_mean), x_mean, y_mean

    def solve(self, *, fit_bias: bool = True, ridge: float = 1e-4, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Same problem as `least_squares`, from the accumulated statistics. With `prior`, the ridge
        pulls the weights toward it (the layer's current weights) instead of toward zero, so a fit
        from few rows stays close to what the layer already computes."""
        gram, cross, x_mean, y_mean = self.centered(fit_bias)
        scale = float(np.trace(gram)) / max(gram.shape[0], 1) or 1.0
        gram[np.diag_indices_from(gram)] += ridge * scale
        if prior is not None:
            cross = cross + ridge * scale * prior.astype(np.float64)
        weights = np.linalg.solve(gram, cross)
        bias = y_mean - x_mean @ weights
        return weights.astype(np.float32), bias.astype(np.float32)

    def residual(self, weights: np.ndarray, bias: np.ndarray) -> float:
        """||x W + b - y||^2 over every row added."""
        w = weights.astype(np.float64)
        b = bias.astype(np.float64)
        fitted = float(np.sum(w * (self.xtx @ w))) + 2 * float(b @ (w.T @ self.x_sum)) + self.rows * float(b @ b)
        cross = float(np.sum(w * self.xty)) + float(b @ self.y_sum)
        return max(self.yy - 2 * cross + fitted, 0.0)

    def relative_error(self, weights: np.ndarray, bias: np.ndarray) -> float:
        """||x W + b - y|| / ||y|| over every row added, computed from the statistics alone."""
        residual = self.residual(weights, bias)
        return float(np.sqrt(residual / self.yy)) if self.yy else float(np.sqrt(residual))


RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def scale_solve(gram: np.ndarray, cross: np.ndarray, weights: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Per-input-feature scales m minimizing ||x diag(m) W - y||^2 (+ ridge pulling m to 1), from
    the Gram x^T x and cross x^T y alone: the normal matrix is G o (W W^T), the right side
    rowsum((x^T y) o W). One parameter per kept input instead of a full matrix, so it stays well
    posed when calibration rows are few (Kwon et al. 2022's least-squares mask tuning)."""
    w = weights.astype(np.float64)
    normal = gram * (w @ w.T)
    rhs = np.sum(cross * w, axis=1)
    scale = float(np.trace(normal)) / max(len(normal), 1) or 1.0
    normal[np.diag_indices_from(normal)] += ridge * scale
    return np.linalg.solve(normal, rhs + ridge * scale)


def _scale_fit(stats: NormalEquations, w_now: np.ndarray, fit_bias: bool) -> tuple[np.ndarray, np.ndarray]:
    gram, cross, x_mean, y_mean = stats.centered(fit_bias)
    w = scale_solve(gram, cross, w_now)[:, None] * w_now.astype(np.float64)
    return w.astype(np.float32), (y_mean - x_mean @ w).astype(np.float32)


def _leave_one_out(folds: list[NormalEquations]):
    """(statistics of all folds but one, that one) for every fold."""
    for i, held_out in enumerate(folds):
        rest = NormalEquations()
        for j, fold in enumerate(folds):
            if j != i:
                rest = rest.merged(fold)
        yield rest, held_out


def _held_out_error(folds: list[NormalEquations], fit) -> float:
    """Residual summed over folds, each predicted by `fit` on the other folds."""
    total = 0.0
    for rest, held_out in _leave_one_out(folds):
        if rest.rows == 0 or held_out.rows == 0:
            return float("inf")
        total += held_out.residual(*fit(rest))
    return total


def validated_ridge(folds: list[NormalEquations], *, fit_bias: bool = True, prior: np.ndarray | None = None, grid=RIDGE_GRID) -> float:
    """The ridge with the least held-out residual, fitting on all folds but one in turn.

    One eigendecomposition per fold makes every ridge in the grid cost two matrix products."""
    errors = np.zeros(len(grid))
    for rest, held_out in _leave_one_out(folds):
        if rest.rows == 0 or held_out.rows == 0:
            return grid[0]
        gram, cross, x_mean, y_mean = rest.centered(fit_bias)
        scale = float(np.trace(gram)) / max(gram.shape[0], 1) or 1.0
        values, vectors = np.linalg.eigh(gram)
        for k, ridge in enumerate(grid):
            rhs = cross if prior is None else cross + ridge * scale * prior.astype(np.float64)
            w = vectors @ ((vectors.T @ rhs) / (values + ridge * scale)[:, None])
            errors[k] += held_out.residual(w, y_mean - x_mean @ w)
    return grid[int(np.argmin(errors))]


# -- sequential layer refit against a reference model (pruning, depthwise substitution) ---------


@dataclass
class LayerTarget:
    """A Conv, Gemm or MatMul whose weights are refit so its output matches `tensor` in `reference`.

    `channels` selects the reference's output channels the layer still produces (None: all). When
    the reference's tensor does not hold `expected` channels (an earlier pass changed that layer),
    `fallback` (e.g. the graph before the current pass) is the reference instead.
    """

    node: gs.Node
    reference: onnx.ModelProto
    tensor: str
    channels: np.ndarray | None = None
    expected: int | None = None
    fallback: onnx.ModelProto | None = None
    # propagation: a tensor added to the layer's output downstream (a residual stream). The target
    # becomes teacher + (reference[correction] - student[correction]), so the refit also repairs
    # the error earlier layers left in that stream, as the pruned model sees it
    correction: str | None = None


def _layer_rows(node: gs.Node, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    if node.op == "Conv":
        return conv_patches(x, node.attrs, tuple(weight.shape[2:]))
    return x.reshape(-1, x.shape[-1])


def _output_rows(node: gs.Node, y: np.ndarray) -> np.ndarray:
    return channels_last_rows(y) if node.op == "Conv" else y.reshape(-1, y.shape[-1])


def _linear_form(node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    """The layer as rows @ W + b: W (features, outputs), b (outputs,)."""
    weight = np.asarray(node.inputs[1].values, dtype=np.float32)
    has_bias = len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant)
    if node.op == "Conv":
        w = weight.reshape(weight.shape[0], -1).T
        out = weight.shape[0]
    elif node.op == "Gemm":
        w = weight.T if node.attrs.get("transB", 0) else weight
        out = w.shape[1]
    else:
        w, out = weight, weight.shape[1]
    bias = np.broadcast_to(np.asarray(node.inputs[2].values, np.float32), (out,)) if has_bias else np.zeros(out, np.float32)
    return w, bias.astype(np.float32)


def _write_linear(node: gs.Node, w: np.ndarray, b: np.ndarray | None, name: str) -> None:
    weight = np.asarray(node.inputs[1].values)
    if node.op == "Conv":
        new = w.T.reshape(weight.shape)
    elif node.op == "Gemm":
        new = w.T if node.attrs.get("transB", 0) else w
    else:
        new = w
    node.inputs[1] = gs.Constant(f"{name}.weight", np.ascontiguousarray(new.astype(np.float32)))
    if b is not None:
        bias = gs.Constant(f"{name}.bias", np.ascontiguousarray(b.astype(np.float32)))
        if len(node.inputs) > 2:
            node.inputs[2] = bias
        else:
            node.inputs.append(bias)


def bias_add(node: gs.Node) -> tuple[gs.Node, int] | None:
    """A MatMul's bias as exporters write it: the single consumer Add with a constant (out,) operand."""
    if node.op != "MatMul" or len(node.outputs[0].outputs) != 1:
        return None
    add = node.outputs[0].outputs[0]
    if add.op != "Add" or len(add.inputs) != 2:
        return None
    index = 1 if add.inputs[0] is node.outputs[0] else 0
    other = add.inputs[index]
    out = np.asarray(node.inputs[1].values).shape[-1]
    if isinstance(other, gs.Constant) and np.asarray(other.values).shape == (out,):
        return add, index
    return None


def residual_input(node: gs.Node) -> str | None:
    """The other summand when the layer's output (after its bias Add, if any) joins a residual
    stream: Add(layer, r) with r computed at run time. None otherwise."""
    found = bias_add(node)
    tensor = found[0].outputs[0] if found else node.outputs[0]
    if len(tensor.outputs) != 1 or tensor.outputs[0].op != "Add" or len(tensor.outputs[0].inputs) != 2:
        return None
    add = tensor.outputs[0]
    other = add.inputs[1] if add.inputs[0] is tensor else add.inputs[0]
    if isinstance(other, gs.Constant) or other is tensor or other.shape != tensor.shape:
        return None
    return other.name


def _shift_bias(add: gs.Node, index: int, shift: np.ndarray, name: str) -> None:
    values = np.asarray(add.inputs[index].values, dtype=np.float32) + shift.astype(np.float32)
    add.inputs[index] = gs.Constant(f"{name}.bias", np.ascontiguousarray(values))


def refittable(node: gs.Node) -> str | None:
    """Why a layer cannot be refit by least squares, or None when it can."""
    if node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return "needs a Conv, Gemm or MatMul with constant weights"
    if node.op == "Conv" and (int(node.attrs.get("group", 1)) != 1 or np.asarray(node.inputs[1].values).ndim != 4):
        return "only ungrouped 2-D Conv layers are refit"
    if node.op == "Gemm" and (node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0):
        return "Gemm with transA, alpha or beta is not refit"
    if node.op == "Gemm" and len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
        return "Gemm bias is not constant"
    if node.op == "Conv" and len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
        return "Conv bias is not constant"
    if node.op == "MatMul" and np.asarray(node.inputs[1].values).ndim != 2:
        return "MatMul weight is not 2-D"
    return None


def _by_reference(targets: list[LayerTarget]) -> dict[int, list[LayerTarget]]:
    grouped: dict[int, list[LayerTarget]] = {}
    for t in targets:
        grouped.setdefault(id(t.reference), []).append(t)
    return grouped


def _truncated(graph: gs.Graph, name: str, *more: str) -> onnx.ModelProto:
    """The current graph cut after tensor `name` (and `more`), so capturing them runs only what they depend on."""
    from onnxopt.graphs import export_model

    sub = graph.copy()
    tensors = [sub.tensors()[n] for n in (name, *more)]
    for tensor in tensors:
        if tensor.dtype is None:
            tensor.dtype = np.float32
    sub.outputs = tensors
    sub.cleanup(remove_unused_graph_inputs=False)
    return export_model(sub)


def depthwise(node: gs.Node) -> bool:
    """A 2-D Conv with one input channel per output channel and constant weights: every output
    channel is its own small least-squares problem over its kernel window (refit per channel)."""
    if node.op != "Conv" or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return False
    if len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
        return False
    weight = np.asarray(node.inputs[1].values)
    group = int(node.attrs.get("group", 1))
    return weight.ndim == 4 and group > 1 and weight.shape[0] == group and weight.shape[1] == 1


class ChannelwiseEquations:
    """Normal equations of a depthwise Conv, one (K+1)-square system per channel (K = kernel
    positions, +1 for the bias), so the fit costs channels x K^2 memory, not (channels x K)^2."""

    def __init__(self) -> None:
        self.xtx = self.xty = self.yy = None
        self.rows = 0

    def add(self, rows: np.ndarray, y: np.ndarray) -> None:
        """rows (R, channels, K) of kernel windows, y (R, channels) of target outputs."""
        a = np.concatenate([rows, np.ones(rows.shape[:2] + (1,), rows.dtype)], axis=2)
        a = np.ascontiguousarray(a.transpose(1, 0, 2), dtype=np.float64)  # (channels, R, K+1): batched BLAS
        yt = np.ascontiguousarray(y.T, dtype=np.float64)
        if self.xtx is None:
            self.xtx = np.zeros((a.shape[0], a.shape[2], a.shape[2]))
            self.xty = np.zeros((a.shape[0], a.shape[2]))
            self.yy = np.zeros(a.shape[0])
        self.xtx += np.matmul(a.transpose(0, 2, 1), a)
        self.xty += np.matmul(a.transpose(0, 2, 1), yt[:, :, None])[:, :, 0]
        self.yy += np.square(yt).sum(axis=1)
        self.rows += rows.shape[0]

    def merged(self, other: "ChannelwiseEquations") -> "ChannelwiseEquations":
        total = ChannelwiseEquations()
        total.xtx, total.xty, total.yy = self.xtx + other.xtx, self.xty + other.xty, self.yy + other.yy
        total.rows = self.rows + other.rows
        return total

    def solve(self, ridge: float, prior: np.ndarray) -> np.ndarray:
        """(channels, K+1) weights and bias; the ridge (relative to each channel's mean input
        energy) pulls toward `prior`, the layer's current weights."""
        k = self.xtx.shape[1]
        scale = np.trace(self.xtx, axis1=1, axis2=2) / k
        scale = np.where(scale > 0, scale, 1.0) * ridge
        normal = self.xtx + scale[:, None, None] * np.eye(k)
        return np.linalg.solve(normal, (self.xty + scale[:, None] * prior)[:, :, None])[:, :, 0]

    def residual(self, w: np.ndarray) -> np.ndarray:
        """Per channel ||x w - y||^2 over the rows added."""
        fitted = np.einsum("gk,gkl,gl->g", w, self.xtx, w)
        return np.maximum(self.yy - 2 * np.sum(w * self.xty, axis=1) + fitted, 0.0)


def _refit_depthwise(node: gs.Node, folds: list[ChannelwiseEquations], grid=RIDGE_GRID) -> dict:
    """Per channel, the held-out best of the current weights and ridge refits toward them."""
    weight = np.asarray(node.inputs[1].values, dtype=np.float64)
    channels = weight.shape[0]
    bias = np.asarray(node.inputs[2].values, dtype=np.float64) if len(node.inputs) > 2 else np.zeros(channels)
    prior = np.concatenate([weight.reshape(channels, -1), bias[:, None]], axis=1)
    stats = folds[0].merged(folds[1])
    held_out = np.zeros((len(grid) + 1, channels))  # candidate 0: leave the channel as it is
    for rest, test in ((folds[0], folds[1]), (folds[1], folds[0])):
        for k, ridge in enumerate(grid, start=1):
            held_out[k] += test.residual(rest.solve(ridge, prior))
    held_out[0] = folds[0].residual(prior) + folds[1].residual(prior)
    choice = np.argmin(held_out, axis=0)
    new = prior.copy()
    for k, ridge in enumerate(grid, start=1):
        if np.any(choice == k):
            solved = stats.solve(ridge, prior)
            new[choice == k] = solved[choice == k]
    denominator = float(stats.yy.sum()) or 1.0
    before = float(np.sqrt(stats.residual(prior).sum() / denominator))
    after = float(np.sqrt(stats.residual(new).sum() / denominator))
    if after < before:
        name = node.name or node.outputs[0].name
        node.inputs[1] = gs.Constant(f"{name}.weight", np.ascontiguousarray(new[:, :-1].reshape(weight.shape).astype(np.float32)))
        bias_const = gs.Constant(f"{name}.bias", np.ascontiguousarray(new[:, -1].astype(np.float32)))
        if len(node.inputs) > 2:
            node.inputs[2] = bias_const
        else:
            node.inputs.append(bias_const)
    return {"layer": node.name, "rows": stats.rows, "ridge": None, "method": "depthwise", "channels_refit": int(np.sum(choice > 0)),
            "error_before": before, "error_after": min(before, after)}


def refit_layers(
    graph: gs.Graph,
    targets: list[LayerTarget],
    data: Iterable[Feeds],
    *,
    rows_per_sample: int = 512,
    ridge: float = 1e-4,
    scarce_factor: int = 20,
    seed: int = 0,
    scale_refit: bool = False,
    keep_if_better: bool = False,
    contiguous_folds: bool = False,
) -> list[dict]:
    """Refit each target in order (ThiNet / He et al. 2017): inputs from the current graph, so
    earlier refits are seen by later ones, outputs from the reference. The ridge pulls toward the
    layer's current weights; when rows are scarce (fewer than `scarce_factor` per feature) its
    strength is chosen by 2-fold cross-validation over the samples, and with `scale_refit` the
    same folds choose between that full refit and per-input scales (scale_solve); with `keep_if_better`
    also leaving the layer as it is competes (a layer that was not pruned itself, refit only to
    absorb upstream error, must not get worse on data it has not seen). `contiguous_folds` splits
    the samples into first and second half instead of alternating, so samples drawn from one
    source in a row (crops of one photo) stay in one fold. Mutates the graph's weights;
    returns per-layer relative errors on the calibration rows before and after."""
    samples = list(data)
    rng = np.random.default_rng(seed)
    positions: dict[int, list[np.ndarray]] = {}
    outputs: dict[int, list[np.ndarray]] = {}
    pending = list(targets)
    while pending:
        retry = []
        for reference, group in _by_reference(pending).items():
            names = list(dict.fromkeys(t.tensor for t in group))
            for t in group:
                positions[id(t)], outputs[id(t)] = [], []
            live = list(group)
            names += [t.correction for t in group if t.correction and t.correction not in names]
            session = make_session(_with_outputs(group[0].reference, names), opt_level="basic")
            for feeds in samples:
                values = dict(zip(names, session.run(names, feeds)))
                for t in list(live):
                    rows = _output_rows(t.node, values[t.tensor])
                    if t.expected is not None and rows.shape[1] != t.expected:
                        if t.fallback is None or t.fallback is t.reference:
                            raise ValueError(f"reference tensor {t.tensor} has {rows.shape[1]} channels, expected {t.expected}")
                        t.reference = t.fallback
                        live.remove(t)
                        retry.append(t)
                        continue
                    if t.correction:
                        rows = rows + _output_rows(t.node, values[t.correction])
                    if t.channels is not None:
                        rows = rows[:, t.channels]
                    pick = np.sort(rng.choice(rows.shape[0], size=min(rows_per_sample, rows.shape[0]), replace=False))
                    positions[id(t)].append(pick)
                    outputs[id(t)].append(rows[pick])
        pending = retry
    results = []
    for target in targets:
        node = target.node
        separate_bias = bias_add(node)
        fit_bias = node.op != "MatMul" or separate_bias is not None
        extra = (target.correction,) if target.correction else ()
        session = make_session(_truncated(graph, node.inputs[0].name, *extra), opt_level="basic")
        channelwise = depthwise(node)
        folds = [ChannelwiseEquations(), ChannelwiseEquations()] if channelwise else [NormalEquations(), NormalEquations()]
        for i, (feeds, pick, y) in enumerate(zip(samples, positions[id(target)], outputs[id(target)])):
            values = session.run(None, feeds)
            weight = np.asarray(node.inputs[1].values)
            if channelwise:
                rows = layer_input_rows(values[0], "Conv", node.attrs, weight.shape)[pick]
            else:
                rows = _layer_rows(node, values[0], weight)[pick]
            if target.correction:
                y = y - _output_rows(node, values[1])[pick]
            folds[2 * i // len(samples) if contiguous_folds else i % 2].add(rows, y)
        if channelwise:
            if folds[0].rows and folds[1].rows:
                results.append(_refit_depthwise(node, folds))
            continue
        w_now, b_now = _linear_form(node)
        stats = folds[0].merged(folds[1])
        if stats.rows == 0:
            continue
        before = stats.relative_error(w_now, b_now if fit_bias else np.zeros_like(b_now))
        chosen = ridge
        if stats.rows < scarce_factor * w_now.shape[0]:
            chosen = validated_ridge(folds, fit_bias=fit_bias, prior=w_now)
        method = "full"
        scarce = stats.rows < scarce_factor * w_now.shape[0]
        if (scale_refit and scarce) or keep_if_better:
            # few rows per weight: keep the full refit only where it predicts held-out rows better
            # than rescaling the kept inputs (and than leaving the layer as it is)
            def full(s, fit_bias=fit_bias, chosen=chosen, w_now=w_now):
                return s.solve(fit_bias=fit_bias, ridge=chosen, prior=w_now)

            def scaled(s, fit_bias=fit_bias, w_now=w_now):
                return _scale_fit(s, w_now, fit_bias)

            errors = {"full": _held_out_error(folds, full)}
            if scale_refit and scarce:
                errors["scale"] = _held_out_error(folds, scaled)
            if keep_if_better:
                b_keep = b_now if fit_bias else np.zeros_like(b_now)
                errors["keep"] = _held_out_error(folds, lambda s, w=w_now, b=b_keep: (w, b))
            method = min(errors, key=errors.get)
        if method == "keep":
            results.append({"layer": node.name, "rows": stats.rows, "ridge": chosen, "method": method, "error_before": before, "error_after": before})
            continue
        w_new, b_new = stats.solve(fit_bias=fit_bias, ridge=chosen, prior=w_now) if method == "full" else _scale_fit(stats, w_now, fit_bias)
        after = stats.relative_error(w_new, b_new)
        if after < before:
            name = node.name or node.outputs[0].name
            _write_linear(node, w_new, b_new if fit_bias and separate_bias is None else None, name)
            if separate_bias is not None:
                _shift_bias(*separate_bias, b_new, name)
        results.append({"layer": node.name, "rows": stats.rows, "ridge": chosen, "method": method, "error_before": before, "error_after": min(after, before)})
    return results


def input_grams(model: onnx.ModelProto, nodes: list[gs.Node], data: Iterable[Feeds], *, rows_per_sample: int = 512, seed: int = 0, centered: bool = True) -> dict[int, np.ndarray]:
    """Gram matrix X^T X / rows of each layer's input rows (im2col for a Conv; about the mean when
    `centered`), keyed by id(node): the curvature of the layer's output error in its weights.
    It tells how much removing an input costs once the others compensate (OBS, Hassibi 1993),
    and E||dW x||^2 = tr(dW G dW^T) for any weight change dW (uncentered G)."""
    names = list(dict.fromkeys(n.inputs[0].name for n in nodes))
    if not names:
        return {}
    session = make_session(_with_outputs(model, names), opt_level="basic")
    rng = np.random.default_rng(seed)
    stats = {id(n): NormalEquations() for n in nodes}
    for feeds in data:
        values = dict(zip(names, session.run(names, feeds)))
        for node in nodes:
            rows = _layer_rows(node, values[node.inputs[0].name], np.asarray(node.inputs[1].values))
            pick = rng.choice(rows.shape[0], size=min(rows_per_sample, rows.shape[0]), replace=False)
            rows = rows[pick]
            stats[id(node)].add(rows, rows[:, :1])
    grams = {}
    for node in nodes:
        s = stats[id(node)]
        if s.rows:
            mean = s.x_sum / s.rows
            grams[id(node)] = s.xtx / s.rows - (np.outer(mean, mean) if centered else 0.0)
    return grams


# -- input statistics for rounding-aware reconstruction (GPTQ-style) ------------------------------


def layer_input_rows(
    x: np.ndarray,
    op: str,
    attrs: dict,
    weight_shape: tuple[int, ...],
    *,
    max_rows: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A layer's input as rows (rows, groups, K): what each output channel's K weights multiply.

    Conv: im2col patches split by group (K = C/groups * KH * KW); Gemm/MatMul: the last axis
    (groups = 1). `max_rows` keeps a random subset, so huge feature maps stay cheap; the Gram
    matrix is an average, so subsampling rows leaves it unbiased.
    """
    if op == "Conv":
        if x.ndim != 4:
            raise ValueError("layer_input_rows handles 2-D convolutions only")
        groups = int(attrs.get("group", 1))
        cols = conv_patches(x, attrs, (weight_shape[2], weight_shape[3]))
        rows = cols.reshape(cols.shape[0], groups, -1)
    else:
        rows = x.reshape(-1, 1, x.shape[-1])
    if max_rows is not None and rows.shape[0] > max_rows:
        rng = rng or np.random.default_rng(0)
        rows = rows[np.sort(rng.choice(rows.shape[0], size=max_rows, replace=False))]
    return rows


def gram(rows: np.ndarray) -> np.ndarray:
    """Per group X^T X of (rows, groups, K) input rows: (groups, K, K), in float64."""
    r = np.ascontiguousarray(rows.transpose(1, 0, 2), dtype=np.float32)  # (groups, rows, K): BLAS per group
    return np.matmul(r.transpose(0, 2, 1), r).astype(np.float64)
