"""Everything the quantizer learns from the float model, in one streamed pass over the calibration data.

Profiling showed compile time going to repeated passes: one for histograms, one per GPTQ chunk,
one for bias correction, one for the reference outputs. Here a single ORT session exposes every
tensor needed (the activations to calibrate, the inputs of the weighted layers, the graph
outputs) and each sample updates, then drops, all of them: histograms, each layer's input Gram
matrix (fitted and held-out halves, for GPTQ and its validation), and the reference outputs the
fidelity budget compares against, and each weighted layer's mean input row (bias correction
reads it, instead of another pass with the quantized model). Gram matrices that
would not fit the memory budget together are collected in further passes, a chunk at a time, so
a large model costs more passes over the data, never more memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.passes.quantize.collect import progress_bar
from onnxopt.passes.quantize.histogram import StreamingHistogram
from onnxopt.passes.quantize.sequential import sample_means
from onnxopt.passes.reconstruct import layer_input_rows, with_outputs
from onnxopt.runtime import make_session

Feeds = dict[str, np.ndarray]


@dataclass
class LayerInputs:
    """A weighted layer's input Gram matrices (groups, K, K): the fitted and held-out halves of the
    samples; and the sum of its input rows (groups, K), for the mean."""

    fit: np.ndarray | None = None
    held_out: np.ndarray | None = None
    fit_rows: int = 0
    held_out_rows: int = 0
    too_few_rows: bool = False  # no Gram matrices: a half would have fewer rows than the layer has inputs
    rows: int = 0
    total: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.total is None or not self.rows else self.total / self.rows


@dataclass
class CalibrationStats:
    histograms: dict[str, StreamingHistogram] = field(default_factory=dict)
    layers: dict[str, LayerInputs] = field(default_factory=dict)
    reference: list[dict[str, np.ndarray]] = field(default_factory=list)
    output_means: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per layer output: each sample's channel means
    samples: int = 0
    passes: int = 0


def _gram_bytes(node: gs.Node) -> int:
    """Bytes of one float32 Gram matrix of the layer's inputs (K = the weight's input columns)."""
    shape = node.inputs[1].shape
    if node.op == "Conv":
        k = int(np.prod(shape[1:]))
        return int(node.attrs.get("group", 1)) * k * k * 4
    k = int(shape[1] if node.op == "Gemm" and node.attrs.get("transB", 0) else shape[0])
    return k * k * 4


def _chunks(nodes: dict[str, gs.Node], gram_layers: set[str], budget: int) -> list[list[str]]:
    """Layers grouped so each group's Gram matrices (two halves) fit the budget."""
    chunks: list[list[str]] = [[n for n in nodes if n not in gram_layers]]
    used = 0
    for name in (n for n in nodes if n in gram_layers):
        size = 2 * _gram_bytes(nodes[name])
        if used and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += size
    return [c for c in chunks if c] or [[]]


def collect_statistics(
    model: onnx.ModelProto,
    activations: list[str],
    layers: dict[str, gs.Node],
    gram_layers: set[str],
    data: Iterable[Feeds],
    *,
    bins: int = 4096,
    rows_per_sample: int = 1024,
    memory_budget: int = 256 << 20,
    seed: int = 0,
    output_means: list[str] = (),
) -> CalibrationStats:
    """Histograms of `activations`, input statistics of `layers` (Gram matrices for `gram_layers`),
    the float model's outputs, and the channel means of the `output_means` tensors per sample (for
    sequential.py), from as few passes over `data` as the memory budget allows."""
    stats = CalibrationStats(histograms={name: StreamingHistogram(bins) for name in dict.fromkeys(activations)})
    samples = data.known_length() if hasattr(data, "known_length") else len(data) if hasattr(data, "__len__") else None
    if samples:
        short = {name for name in gram_layers
                 if _rows_per_half(layers[name], min(samples, DEPTHWISE_GRAM_SAMPLES) if _grouped(layers[name]) else samples, rows_per_sample) < _columns(layers[name])}
        for name in short:
            stats.layers[name] = LayerInputs(too_few_rows=True)
        gram_layers = set(gram_layers) - short
    outputs = [o.name for o in model.graph.output]
    rngs = {name: np.random.default_rng([seed, i]) for i, name in enumerate(layers)}  # one stream per layer: the threads' order cannot change a draw
    for index, chunk in enumerate(_chunks(layers, gram_layers, memory_budget)):
        first = index == 0
        inputs = {name: layers[name].inputs[0].name for name in chunk}
        wanted = list(dict.fromkeys((list(stats.histograms) + outputs + list(output_means) if first else []) + list(inputs.values())))
        if not wanted:
            continue
        session = make_session(with_outputs(model, wanted), opt_level="basic", arena=False)
        stats.passes += 1
        progress = progress_bar()
        with progress, ThreadPoolExecutor(NUMPY_THREADS) as pool:
            task = progress.add_task("calibrating" if first else f"layer statistics ({len(chunk)} layers)",
                                     total=data.known_length() if hasattr(data, "known_length") else None)
            for i, feeds in enumerate(data):
                values = dict(zip(wanted, session.run(wanted, feeds)))
                jobs = []
                if first:
                    jobs += [partial(hist.update, values[name]) for name, hist in stats.histograms.items()]
                    stats.reference.append({name: values[name] for name in outputs})
                    for name in output_means:
                        stats.output_means.setdefault(name, []).append(sample_means(values[name]))
                    stats.samples += 1
                for name in chunk:
                    gram = name in gram_layers and (i < DEPTHWISE_GRAM_SAMPLES or not _grouped(layers[name]))
                    jobs.append(partial(_update_layer, stats.layers.setdefault(name, LayerInputs()), layers[name], values[inputs[name]],
                                        gram, i % 2 == 0, rows_per_sample, rngs[name]))
                for done in [pool.submit(job) for job in jobs]:
                    done.result()  # a job's error surfaces here
                progress.advance(task)
        del session
    return stats


NUMPY_THREADS = min(4, os.cpu_count() or 1)  # layers' statistics (and GPTQ) side by side: numpy releases the GIL in its loops
ROWS_PER_COLUMN = 32  # rows sampled per sample and input column: plenty for a K x K Gram matrix over many samples
MIN_ROWS = 256
DEPTHWISE_GRAM_SAMPLES = 16  # a depthwise (or other grouped) conv's 9 or 25 column Gram matrices settle within 16 samples, and took most of the Gram time (its mean still sees every sample: bias correction needs it)


def _grouped(node: gs.Node) -> bool:
    return node.op == "Conv" and int(node.attrs.get("group", 1)) > 1


def _columns(node: gs.Node) -> int:
    shape = tuple(node.inputs[1].shape)
    return int(np.prod(shape[1:])) if node.op == "Conv" else max(int(s) for s in shape[:2])


def _rows_per_half(node: gs.Node, samples: int, max_rows: int) -> float:
    """Input rows the smaller calibration half will give a Conv with static shapes (inf when unknown:
    MatMul rows depend on the sequence length)."""
    x, w = node.inputs[0].shape, node.inputs[1].shape
    if node.op != "Conv" or x is None or len(x) != 4 or not all(isinstance(d, int) for d in (*x, *w)):
        return float("inf")
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return float("inf")  # the padding is not in `pads`: no prediction, the rows are counted as they come
    oh, ow = _conv_output_size(node, x[2], x[3])
    return min(x[0] * oh * ow, _row_cap(node, max_rows)) * (samples // 2)


def _row_cap(node: gs.Node, max_rows: int) -> int:
    """Rows sampled per calibration sample: enough for a K x K Gram matrix, at most `max_rows`."""
    return min(max_rows, max(MIN_ROWS, ROWS_PER_COLUMN * _columns(node)))


def _conv_output_size(node: gs.Node, h: int, w: int) -> tuple[int, int]:
    (sh, sw), (dh, dw) = tuple(node.attrs.get("strides", (1, 1))), tuple(node.attrs.get("dilations", (1, 1)))
    top, left, bottom, right = tuple(node.attrs.get("pads", (0, 0, 0, 0)))
    kh, kw = node.inputs[1].shape[2], node.inputs[1].shape[3]
    return (h + top + bottom - dh * (kh - 1) - 1) // sh + 1, (w + left + right - dw * (kw - 1) - 1) // sw + 1


def _update_layer(acc: LayerInputs, node: gs.Node, x: np.ndarray, with_gram: bool, fit_half: bool, max_rows: int, rng) -> None:
    # A depthwise conv's Gram matrices are 9 x 9: thousands of rows per sample only cost time (most of the Gram time on EfficientNet-Lite0)
    rows = _input_rows(x, node, _row_cap(node, max_rows), rng)
    acc.rows += rows.shape[0]
    total = rows.sum(axis=0, dtype=np.float64)
    acc.total = total if acc.total is None else acc.total + total
    if with_gram:
        # stored in float32: half the memory of the largest statistics (GPTQ solves in float64). `gram`'s float32
        # product is taken as it is (its float64 copy converted back gave the same numbers, at two copies per sample)
        # one strided matmul per group, no transposed copy of the rows first (2-4x faster for depthwise convs' many groups)
        r = rows.astype(np.float32, copy=False)
        h = np.matmul(r.transpose(1, 2, 0), r.transpose(1, 0, 2))
        if fit_half:
            acc.fit = h if acc.fit is None else np.add(acc.fit, h, out=acc.fit)
            acc.fit_rows += rows.shape[0]
        else:
            acc.held_out = h if acc.held_out is None else np.add(acc.held_out, h, out=acc.held_out)
            acc.held_out_rows += rows.shape[0]


def _input_rows(x: np.ndarray, node: gs.Node, max_rows: int, rng) -> np.ndarray:
    """`layer_input_rows` with `max_rows`, the same rows, but a Conv's patches are gathered only at
    the sampled output positions instead of unfolding the whole feature map first (profiling: the
    full im2col and its copies were most of the calibration time on EfficientNet-Lite0)."""
    shape = tuple(node.inputs[1].shape)
    if node.op != "Conv" or x.ndim != 4 or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return layer_input_rows(x, node.op, node.attrs, shape, max_rows=max_rows, rng=rng)
    (sh, sw), (dh, dw) = tuple(node.attrs.get("strides", (1, 1))), tuple(node.attrs.get("dilations", (1, 1)))
    top, left, bottom, right = tuple(node.attrs.get("pads", (0, 0, 0, 0)))
    n, c, h, w = x.shape
    kh, kw = shape[2], shape[3]
    oh, ow = _conv_output_size(node, h, w)
    positions = n * oh * ow
    if positions <= max_rows:
        return layer_input_rows(x, node.op, node.attrs, shape, max_rows=max_rows, rng=rng)
    index = np.sort(rng.choice(positions, size=max_rows, replace=False))  # the draw layer_input_rows makes
    b, rest = np.divmod(index, oh * ow)
    row, col = np.divmod(rest, ow)
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ys = (row * sh)[:, None] + dh * np.arange(kh)[None, :]  # (rows, kh)
    xs = (col * sw)[:, None] + dw * np.arange(kw)[None, :]  # (rows, kw)
    patches = padded.transpose(0, 2, 3, 1)[b[:, None, None], ys[:, :, None], xs[:, None, :]]  # (rows, kh, kw, C)
    groups = int(node.attrs.get("group", 1))
    return np.ascontiguousarray(patches.transpose(0, 3, 1, 2)).reshape(max_rows, groups, -1)
