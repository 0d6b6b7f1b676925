"""Which channels to keep: importance per channel class, and the budget that turns scores into counts.

Importance is summed over everything a class touches, so a residual group is judged by all the
convs that read and write it (Torch-Pruning's group importance):
- "l1" / "l2": norms of the weight slices (producers' filters and consumers' input columns);
- "bn": |gamma| of the BatchNormalization nodes in the group (network slimming);
- "activation": ||W[:, c]|| * rms(x_c) for every consumer, the first-order size of what channel c
  contributes to the consumer's output on calibration data (structured Wanda);
- "obs": the output error a class's removal costs once the remaining inputs compensate, ranked by
  greedy elimination (selection.py), the criterion that matches what reconstruction then does.
Each contribution is divided by its mean over the dim, so layers of different scale count alike.

The budget is a ratio of classes to remove per group (uniform, or overridden per layer), the
kept count rounded to a multiple of `round_to` and never below `min_channels`; a FLOPs target
is met by bisecting the uniform ratio against the MACs the plan predicts.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from onnxopt.graphs import constant_input_value
from onnxopt.passes.prune.groups import Analysis, ChannelGroup

CRITERIA = ("l1", "l2", "bn", "activation", "obs")


def _slice_norms(values: np.ndarray, axis: int, order: int) -> np.ndarray:
    moved = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0).reshape(values.shape[axis], -1)
    return np.abs(moved).sum(axis=1) if order == 1 else np.sqrt(np.square(moved).sum(axis=1))


def _add(score: np.ndarray, classes: np.ndarray, values: np.ndarray) -> None:
    mean = float(values.mean())
    if mean > 0:
        np.add.at(score, classes, values / mean)


def group_importance(group: ChannelGroup, criterion: str, energy: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """One score per channel class of the group; higher means keep."""
    score = np.zeros(group.n_classes)
    if criterion == "bn":
        for dim in group.dims_of("bn-scale"):
            _add(score, group.classes[dim.key], np.abs(constant_input_value(dim.node.inputs[dim.index]).astype(np.float64)))
        if score.any():
            return score
        criterion = "l2"
    if criterion == "activation":
        for dim in group.dims_of("in"):
            x = dim.node.inputs[0]
            if energy and x.name in energy and len(energy[x.name]) == dim.length:
                norms = _slice_norms(constant_input_value(dim.node.inputs[dim.index]), dim.axis, 2)
                _add(score, group.classes[dim.key], norms * np.sqrt(energy[x.name]))
        if score.any():
            return score
        criterion = "l2"
    order = 1 if criterion == "l1" else 2
    for dim in group.dims_of("out") + group.dims_of("in"):
        _add(score, group.classes[dim.key], _slice_norms(constant_input_value(dim.node.inputs[dim.index]), dim.axis, order))
    return score


def kept_count(n: int, ratio: float, round_to: int, min_channels: int) -> int:
    """Classes to keep: n * (1 - ratio), rounded to a multiple of round_to, at least min_channels."""
    if ratio <= 0 or n <= min_channels:
        return n
    keep = n * (1.0 - ratio)
    if round_to > 1 and n >= round_to:
        keep = round(keep / round_to) * round_to
    return int(min(n, max(round(keep), min(min_channels, n), 1)))


def choose_kept(group: ChannelGroup, score: np.ndarray, n_keep: int) -> np.ndarray:
    """Mask over classes: the n_keep best, plus whatever keeps every tensor at least one channel."""
    keep = np.zeros(group.n_classes, bool)
    keep[np.argsort(-score, kind="stable")[:n_keep]] = True
    for dim in group.dims:
        classes = group.classes[dim.key]
        if not keep[classes].any():
            keep[classes[np.argmax(score[classes])]] = True
    return keep


def group_ratio(group: ChannelGroup, ratio: float, layer_ratios: dict[str, float]) -> float:
    """The configured ratio for a group: the first layer pattern matching one of its producers wins."""
    for pattern, value in layer_ratios.items():
        if any(fnmatch.fnmatchcase(p.name, pattern) for p in group.producers):
            return float(value)
    return ratio


def plan(groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float, layer_ratios: dict[str, float], round_to: int, min_channels: int, counts: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """Kept-class masks for every group at a given uniform ratio, or at explicit kept `counts`
    (groups without a mask stay whole)."""
    masks = {}
    for group in groups:
        r = group_ratio(group, ratio, layer_ratios)
        n_keep = counts[group.gid] if counts and group.gid in counts else kept_count(group.n_classes, r, round_to, min_channels)
        if n_keep < group.n_classes:
            mask = choose_kept(group, scores[group.gid], n_keep)
            if not mask.all():
                masks[group.gid] = mask
    return masks


def kept_lengths(analysis: Analysis, masks: dict[int, np.ndarray]) -> dict[str, int]:
    lengths = {}
    for group in analysis.groups:
        if group.gid in masks:
            for dim in group.dims:
                lengths[dim.key] = int(masks[group.gid][group.classes[dim.key]].sum())
    return lengths


def predicted_macs(analysis: Analysis, base: dict[int, int], masks: dict[int, np.ndarray]) -> int:
    """MACs after the plan: each Conv/Gemm/MatMul scales with the kept fraction of its dims."""
    lengths = kept_lengths(analysis, masks)
    total = 0.0
    for mac in analysis.mac_nodes:
        macs = float(base.get(id(mac.node), 0))
        for key in mac.dims:
            if key in lengths:
                macs *= lengths[key] / analysis.dims[key].length
        total += macs
    return int(total)


def ratio_for_flops(analysis, groups, scores, keep_fraction, layer_ratios, round_to, min_channels, base, total_macs, max_ratio=0.95):
    """The smallest uniform ratio whose plan keeps at most `keep_fraction` of the model's MACs.

    `base` maps id(node) to the node's MACs at concrete shapes; `total_macs` is the model's.
    """
    counted = sum(base.get(id(m.node), 0) for m in analysis.mac_nodes)
    other = total_macs - counted  # MACs of nodes pruning does not touch

    def macs_at(r, counts=None):
        return other + predicted_macs(analysis, base, plan(groups, scores, r, layer_ratios, round_to, min_channels, counts))

    target = keep_fraction * total_macs
    if macs_at(max_ratio) > target:
        return max_ratio, macs_at(max_ratio), None
    low, high = 0.0, max_ratio
    for _ in range(24):
        mid = (low + high) / 2
        if macs_at(mid) <= target:
            high = mid
        else:
            low = mid
    # rounding leaves slack under the target: give channels back, a round_to step at a time, to the
    # groups (not fixed by layer_ratios) where a step costs the fewest MACs, while the target holds
    counts = {g.gid: kept_count(g.n_classes, group_ratio(g, high, layer_ratios), round_to, min_channels) for g in groups}
    free = [g for g in groups if group_ratio(g, -1.0, layer_ratios) == -1.0]
    current = macs_at(high, counts)
    while True:
        best = None
        for g in free:
            step = min(round_to, g.n_classes - counts[g.gid])
            if step <= 0:
                continue
            trial = {**counts, g.gid: counts[g.gid] + step}
            macs = macs_at(high, trial)
            if macs <= target and (best is None or macs < best[1]):
                best = (trial, macs)
        if best is None:
            break
        counts, current = best
    return high, current, counts
