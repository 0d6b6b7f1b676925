"""Output-error importance: what pruning a unit to k classes costs at the model's OUTPUT.

A *unit* is anything the global budget can shrink: a channel group (FFN neurons, conv channels,
an EfficientNet block's expanded channels with its depthwise conv) or the heads of one attention
block. Inside a unit, classes are ranked by greedy Optimal Brain Surgeon on the unit's consumers
(selection.obs_ranking), so the removal order already lets the surviving inputs compensate.

Across units, scores of different layers are not comparable, so each unit is *probed*: its
consumers' weights are replaced by the least-squares compensated weights over the kept inputs
(w_K = (G_KK)^-1 G_K: w, zero elsewhere, G the consumer's input Gram matrix on calibration data:
what reconstruction will then do) and the model is run on calibration samples. The relative
output error ||y - y_teacher||^2 / ||y_teacher||^2 at each candidate size is the unit's cost
curve (Kwon et al. 2022 measure a Fisher approximation of the same quantity; measuring it on the
output directly needs no gradients and sees every nonlinearity after the unit). Consumers' weights
are fed as graph inputs, so one session serves every size of every unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import FreshNames, constant_input_value, export_model
from onnxopt.passes.prune.groups import ChannelGroup, Dim
from onnxopt.passes.prune.heads import HeadGroup
from onnxopt.passes.prune.selection import obs_ranking
from onnxopt.passes.reconstruct import refittable, scale_solve
from onnxopt.runtime import make_session


@dataclass
class Consumer:
    """A Conv/Gemm/MatMul reading a unit: its weight as (features, outputs) and each feature's class."""

    node: gs.Node
    index: int
    feature_class: np.ndarray
    matrix: np.ndarray
    compensate: bool

    def weight_for(self, keep_class: np.ndarray, gram: np.ndarray | None, ridge: float = 1e-3) -> np.ndarray:
        """The node's weight with removed classes zeroed and (with a Gram) the kept ones rescaled
        to best reproduce the full layer's output (scale_solve: few parameters, so it holds on
        data the Gram did not see)."""
        keep = keep_class[self.feature_class]
        w = np.zeros_like(self.matrix)
        w[keep] = self.matrix[keep]
        if gram is not None and self.compensate and keep.any():
            cross = gram[keep] @ self.matrix
            w[keep] *= scale_solve(gram[np.ix_(keep, keep)], cross, self.matrix[keep], ridge)[:, None]
        return from_matrix(self.node, w, np.asarray(constant_input_value(self.node.inputs[self.index])).shape)


def compensated_weight(consumer: Consumer, keep_class: np.ndarray, gram: np.ndarray | None, ridge: float = 1e-3) -> np.ndarray:
    """The consumer's weight refit by least squares over the kept inputs (w_K = G_KK^-1 G_K: w, the
    OBS update, with a ridge relative to the mean input energy): what a full reconstruction does,
    where `weight_for` only rescales. Consumers without a Gram or compensation fall back to it."""
    if gram is None or not consumer.compensate or type(consumer) is not Consumer:
        return consumer.weight_for(keep_class, gram, ridge)
    keep = keep_class[consumer.feature_class]
    w = np.zeros_like(consumer.matrix)
    if keep.any():
        normal = gram[np.ix_(keep, keep)].copy()
        normal[np.diag_indices_from(normal)] += ridge * (float(np.trace(normal)) / max(len(normal), 1) or 1.0)
        w[keep] = np.linalg.solve(normal, gram[keep] @ consumer.matrix)
    return from_matrix(consumer.node, w, np.asarray(constant_input_value(consumer.node.inputs[consumer.index])).shape)


def to_matrix(node: gs.Node, weight: np.ndarray) -> np.ndarray:
    """A Conv, Gemm or MatMul weight as (input features, outputs), the layout of the Gram matrices."""
    if node.op == "Conv":
        return weight.reshape(weight.shape[0], -1).T
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return weight.T
    return weight


def from_matrix(node: gs.Node, matrix: np.ndarray, shape: tuple) -> np.ndarray:
    if node.op == "Conv":
        return np.ascontiguousarray(matrix.T.reshape(shape)).astype(np.float32)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return np.ascontiguousarray(matrix.T).astype(np.float32)
    return np.ascontiguousarray(matrix).astype(np.float32)


@dataclass
class Unit:
    """One prunable unit for the global budget."""

    kind: str  # "heads" or "channels"
    name: str
    size: int
    group: ChannelGroup | HeadGroup
    consumers: list[Consumer]
    ranking: np.ndarray | None = None  # per class, higher = keep
    levels: list[int] = field(default_factory=list)  # candidate kept sizes, descending, starting at size
    cost: dict[int, float] = field(default_factory=dict)  # kept size -> relative output error
    saved: dict[int, float] = field(default_factory=dict)  # kept size -> MACs removed

    def keep_mask(self, kept: int) -> np.ndarray:
        mask = np.zeros(self.size, bool)
        mask[np.argsort(-self.ranking, kind="stable")[:kept]] = True
        return mask


def channel_consumers(group: ChannelGroup) -> list[Consumer]:
    consumers = []
    for dim in group.dims_of("in"):
        consumers.append(_dim_consumer(dim, group.classes[dim.key]))
    return consumers


def _dim_consumer(dim: Dim, classes: np.ndarray) -> Consumer:
    node = dim.node
    weight = np.asarray(constant_input_value(node.inputs[dim.index]), dtype=np.float64)
    if refittable(node) is None:
        per = int(np.prod(weight.shape[2:])) if node.op == "Conv" else 1
        return Consumer(node, dim.index, np.repeat(classes, per), to_matrix(node, weight), True)
    # grouped conv or anything not refittable: zero the slices along the dim's axis, no compensation
    moved = np.moveaxis(weight, dim.axis, 0)
    return _AxisConsumer(node, dim.index, classes, moved.reshape(moved.shape[0], -1), False, dim.axis, weight.shape)


@dataclass
class _AxisConsumer(Consumer):
    axis: int = 0
    shape: tuple = ()

    def weight_for(self, keep_class, gram, ridge=1e-3):
        w = self.matrix * keep_class[self.feature_class][:, None]
        moved_shape = (self.shape[self.axis],) + tuple(s for i, s in enumerate(self.shape) if i != self.axis)
        return np.ascontiguousarray(np.moveaxis(w.reshape(moved_shape), 0, self.axis)).astype(np.float32)


def head_consumer(group: HeadGroup) -> Consumer:
    weight = np.asarray(constant_input_value(group.output.inputs[1]), dtype=np.float64)
    classes = np.repeat(np.arange(group.heads), group.head_dim)
    return Consumer(group.output, 1, classes, weight, True)


def head_ranking(group: HeadGroup, consumer: Consumer, gram: np.ndarray | None) -> np.ndarray:
    """Greedy OBS over the output projection's input blocks (one block of head_dim rows per head)."""
    if gram is not None:
        dim = Dim(f"{group.name}#heads", group.heads * group.head_dim, 0, 0, node=group.output, index=1, role="in")
        pseudo = ChannelGroup(-1, [dim], {dim.key: consumer.feature_class}, group.heads, [], [group.output])
        ranking = obs_ranking(pseudo, {id(group.output): gram}, keep_at_least=1)
        if ranking is not None:
            return ranking
    norms = np.linalg.norm(consumer.matrix.reshape(group.heads, -1), axis=1)
    return norms


class Prober:
    """One session of the graph in which every consumer's weight is a graph input, so a run can
    price any combination of unit sizes: relative output error against the reference outputs."""

    def __init__(self, graph: gs.Graph, units: list[Unit], grams: dict[int, np.ndarray], samples: list[dict], reference: list[list[np.ndarray]], token_mask: str | None = None, compensation: str = "scale"):
        self.grams = grams
        self.compensation = compensation
        fresh = FreshNames(graph)
        saved_inputs = list(graph.inputs)
        self.names: dict[tuple[int, int], str] = {}
        self.defaults: dict[str, np.ndarray] = {}
        swapped = []
        for consumer in (c for u in units for c in u.consumers):
            key = (id(consumer.node), consumer.index)
            if key in self.names:
                continue
            const = consumer.node.inputs[consumer.index]
            var = gs.Variable(fresh(f"{const.name}_probe"), dtype=np.float32, shape=list(np.shape(constant_input_value(const))))
            consumer.node.inputs[consumer.index] = var
            graph.inputs.append(var)
            self.names[key] = var.name
            self.defaults[var.name] = np.asarray(constant_input_value(const), dtype=np.float32)
            swapped.append((consumer, const))
        try:
            self.session = make_session(export_model(graph), opt_level="basic")
        finally:
            for consumer, const in swapped:
                consumer.node.inputs[consumer.index] = const
            graph.inputs = saved_inputs
        self.batches = _batched(samples)
        if len(self.batches) == 1:
            self.reference = [[np.concatenate([r[i] for r in reference], axis=0) for i in range(len(reference[0]))]]
        else:
            self.reference = reference
        # padding positions (token mask 0) are left out of the error: real tokens never attend to them
        self.row_weights = [None if token_mask not in b else np.asarray(b[token_mask], np.float64) for b in self.batches]
        self.denominator = sum(_squared(r, w) for ref, w in zip(self.reference, self.row_weights) for r in ref) or 1.0

    def weights(self, unit: Unit, level: int) -> dict[str, np.ndarray]:
        """The probe inputs that shrink `unit` to `level` kept classes (compensated consumers)."""
        keep = unit.keep_mask(level)
        return {self.names[id(c.node), c.index]: self._compensated(c, keep) for c in unit.consumers}

    def _compensated(self, consumer: Consumer, keep: np.ndarray) -> np.ndarray:
        """"scale" rescales the kept inputs; "full" refits the consumer by least squares
        (compensated_weight); "conv" refits Conv consumers (every output position is a row) and
        rescales the others."""
        gram = self.grams.get(id(consumer.node))
        if self.compensation == "full" or (self.compensation == "conv" and consumer.node.op == "Conv"):
            return compensated_weight(consumer, keep, gram)
        return consumer.weight_for(keep, gram)

    def error(self, weights: dict[str, np.ndarray]) -> float:
        outs = _run_all(self.session, self.batches, {**self.defaults, **weights})
        error = sum(_squared(o.astype(np.float64) - r, w) for outs_i, ref_i, w in zip(outs, self.reference, self.row_weights) for o, r in zip(outs_i, ref_i))
        return error / self.denominator


def _squared(x: np.ndarray, row_weights: np.ndarray | None) -> float:
    """Sum of squares, each (batch, position) row weighted when the output is laid out that way."""
    if row_weights is not None and x.shape[: row_weights.ndim] == row_weights.shape:
        return float(np.sum(np.square(x, dtype=np.float64).reshape(*row_weights.shape, -1) * row_weights[..., None]))
    return float(np.sum(np.square(x, dtype=np.float64)))


def output_costs(
    graph: gs.Graph, units: list[Unit], grams: dict[int, np.ndarray], samples: list[dict], reference: list[list[np.ndarray]], compensation: str = "scale"
) -> None:
    """Fill each unit's cost curve: relative output error at every level, every other unit whole."""
    prober = Prober(graph, units, grams, samples, reference, compensation=compensation)
    for unit in units:
        for level in unit.levels:
            unit.cost[level] = 0.0 if level == unit.size else prober.error(prober.weights(unit, level))


def _batched(samples: list[dict]) -> list[dict]:
    """The samples stacked along the batch axis when they all have batch 1 and equal shapes
    (one run instead of many); otherwise the samples themselves."""
    if len(samples) > 1 and all(
        set(f) == set(samples[0]) and all(np.shape(f[k]) == np.shape(samples[0][k]) and np.shape(f[k])[:1] == (1,) for k in f) for f in samples
    ):
        return [{k: np.concatenate([f[k] for f in samples], axis=0) for k in samples[0]}]
    return samples


def _run_all(session, batches: list[dict], extra: dict) -> list[list[np.ndarray]]:
    try:
        return [session.run(None, {**feeds, **extra}) for feeds in batches]
    except Exception:  # a model with a fixed batch of 1: one sample at a time
        if len(batches) != 1:
            raise
        stacked = batches[0]
        n = next(iter(stacked.values())).shape[0]
        outs = [session.run(None, {**{k: v[i : i + 1] for k, v in stacked.items()}, **extra}) for i in range(n)]
        return [[np.concatenate([o[j] for o in outs], axis=0) for j in range(len(outs[0]))]]
