"""Layer-wise reconstruction against the teacher (the original model), shared by the lossy passes.

Pruning, depthwise substitution and quantization all change a layer and then ask the same
question: which weights make this layer's output match the teacher's on calibration data? With
the layer's (student) inputs X and the teacher's outputs Y, the answer is a least-squares fit
(ThiNet, He et al. 2017); when only a per-channel shift is affordable, bias correction (the mean
of the error) is the closed-form special case. This module captures activations and solves those
fits; it knows nothing of any one pass.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx

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
        kh, kw = weight_shape[2], weight_shape[3]
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        cols = im2col(
            x, (kh, kw), tuple(attrs.get("strides", (1, 1))), (pads[0], pads[1], pads[2], pads[3]), tuple(attrs.get("dilations", (1, 1)))
        )
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
