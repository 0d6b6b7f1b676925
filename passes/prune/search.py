"""Global mask search: rank inside every unit, measure each unit's output cost, allocate the MACs.

This is the post-training recipe of Kwon et al. 2022 on an ONNX graph, with the Fisher estimate
replaced by the measured output error of each unit at each size (importance.py): heads and FFN
neurons (or conv channels) of every layer compete for one MACs budget (budget.py), and which
classes of a unit go is decided by greedy OBS on its consumers (the mask rearrangement step).
The least-squares mask tuning is reconstruct.refit_layers, run by the pass after removal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import export_model
from onnxopt.passes.prune.budget import allocate, channel_levels, head_levels, interpolate
from onnxopt.passes.prune.groups import Analysis, ChannelGroup
from onnxopt.passes.prune.heads import HeadGroup
from onnxopt.passes.prune.importance import Unit, channel_consumers, head_consumer, head_ranking, output_costs
from onnxopt.passes.prune.plan import group_importance, predicted_macs
from onnxopt.passes.prune.selection import obs_ranking
from onnxopt.passes.reconstruct import input_grams
from onnxopt.runtime import make_session


@dataclass
class SearchResult:
    masks: dict[int, np.ndarray]  # channel group id -> kept classes
    heads: dict[int, np.ndarray]  # index into head_groups -> kept head indices
    units: list[Unit]
    kept: dict[str, int]
    predicted_macs: float


def _grams(graph: gs.Graph, units: list[Unit], samples: list[dict], rows_per_sample: int, seed: int, memory_mb: int) -> dict[int, np.ndarray]:
    """Uncentered input Gram matrices of every compensating consumer, in memory-bounded batches."""
    model = export_model(graph)
    nodes = list({id(c.node): c.node for u in units for c in u.consumers if c.compensate}.values())
    grams: dict[int, np.ndarray] = {}
    batch, size = [], 0
    for node in nodes + [None]:
        features = 0 if node is None else next(c.matrix.shape[0] for u in units for c in u.consumers if c.node is node)
        if batch and (node is None or size + features**2 * 8 > memory_mb * 2**20):
            grams.update(input_grams(model, batch, samples, rows_per_sample=rows_per_sample, seed=seed, centered=False))
            batch, size = [], 0
        if node is not None:
            batch.append(node)
            size += features**2 * 8
    return grams


def head_units(groups: list[HeadGroup]) -> list[Unit]:
    return [Unit("heads", f"heads:{g.name}", g.heads, g, [head_consumer(g)]) for g in groups]


def rank_heads(units: list[Unit], grams: dict[int, np.ndarray]) -> None:
    for unit in units:
        consumer = unit.consumers[0]
        unit.ranking = head_ranking(unit.group, consumer, grams.get(id(consumer.node)))


def global_search(
    graph: gs.Graph,
    analysis: Analysis,
    channel_groups: list[ChannelGroup],
    head_groups: list[HeadGroup],
    samples: list[dict],
    node_macs: dict[int, int],
    total_macs: int,
    keep_fraction: float,
    *,
    round_to: int,
    min_channels: int,
    rows_per_sample: int = 512,
    probe_samples: int = 32,
    gram_memory_mb: int = 1024,
    seed: int = 0,
    compensation: str = "scale",
    max_prune: float = 1.0,
) -> SearchResult:
    """Masks for channel groups and kept heads meeting `keep_fraction` of the MACs at least output cost."""
    units = [Unit("channels", f"channels:{g.gid}:{g.name}", g.n_classes, g, channel_consumers(g)) for g in channel_groups]
    units += head_units(head_groups)
    # compensation is fit on one half of the calibration samples and judged on the other, so a
    # unit's cost is what the pruned model loses on data its refit has not seen
    fit, probe = (samples[0::2], samples[1::2]) if len(samples) > 1 else (samples, samples)
    grams = _grams(graph, units, fit, rows_per_sample, seed, gram_memory_mb)

    measured_levels = {}
    for unit in units:
        if unit.kind == "channels":
            group = unit.group
            ranking = obs_ranking(group, grams, keep_at_least=min(min_channels, group.n_classes))
            unit.ranking = ranking if ranking is not None else group_importance(group, "l2")
            sizes, measured = channel_levels(group.n_classes, round_to, min_channels)
            if max_prune < 1.0:  # never remove more than this fraction of one group
                floor = group.n_classes * (1.0 - max_prune)
                sizes, measured = [k for k in sizes if k >= floor], [k for k in measured if k >= floor]
            unit.levels = measured
            measured_levels[unit.name] = sizes
        else:
            unit.levels = head_levels(unit.size)
    rank_heads([u for u in units if u.kind == "heads"], grams)

    probe = probe[:probe_samples]
    reference_session = make_session(export_model(graph), opt_level="basic")
    reference = [reference_session.run(None, feeds) for feeds in probe]
    output_costs(graph, units, grams, probe, reference, compensation)
    for unit in units:
        if unit.name in measured_levels:
            interpolate(unit, measured_levels[unit.name])

    counted = sum(node_macs.get(id(m.node), 0) for m in analysis.mac_nodes)
    other = total_macs - counted
    full = predicted_macs(analysis, node_macs, {})
    masks_at: dict[tuple[str, int], np.ndarray] = {}
    for unit in units:
        if unit.kind == "channels":
            for level in unit.levels:
                mask = unit.keep_mask(level)
                masks_at[unit.name, level] = mask
                unit.saved[level] = full - (predicted_macs(analysis, node_macs, {unit.group.gid: mask}) if level < unit.size else full)
        else:
            per_head = sum(node_macs.get(id(n), 0) for n in unit.group.mac_nodes) / unit.size
            unit.saved = {level: per_head * (unit.size - level) for level in unit.levels}

    def macs_of(kept: dict[str, int]) -> float:
        masks = {u.group.gid: masks_at[u.name, kept[u.name]] for u in units if u.kind == "channels" and kept[u.name] < u.size}
        heads_saved = sum(u.saved[kept[u.name]] for u in units if u.kind == "heads")
        return other + predicted_macs(analysis, node_macs, masks) - heads_saved

    kept, predicted = allocate(units, macs_of, keep_fraction * total_macs)
    masks = {u.group.gid: masks_at[u.name, kept[u.name]] for u in units if u.kind == "channels" and kept[u.name] < u.size}
    heads = {}
    for i, group in enumerate(head_groups):
        unit = next(u for u in units if u.group is group)
        if kept[unit.name] < unit.size:
            heads[i] = np.flatnonzero(unit.keep_mask(kept[unit.name]))
    return SearchResult(masks, heads, units, kept, predicted)


def uniform_heads(graph: gs.Graph, head_groups: list[HeadGroup], ratio: float, calibration, rows_per_sample: int, seed: int) -> dict[int, np.ndarray]:
    """Kept heads of every block at one ratio (at least one head each), ranked by OBS with
    calibration data, else by the norm of each head's output-projection rows."""
    if not head_groups or ratio <= 0:
        return {}
    units = head_units(head_groups)
    grams = {}
    if calibration is not None:
        grams = input_grams(export_model(graph), [g.output for g in head_groups], list(calibration), rows_per_sample=rows_per_sample, seed=seed, centered=False)
    rank_heads(units, grams)
    kept = {}
    for i, unit in enumerate(units):
        n_keep = max(1, round(unit.size * (1 - ratio)))
        if n_keep < unit.size:
            kept[i] = np.flatnonzero(unit.keep_mask(n_keep))
    return kept


def attention_report(head_groups: list[HeadGroup], blocked: list[str], sizes: dict[str, tuple[int, int]], search: SearchResult | None, fits: list[dict]) -> dict:
    """Report entries for attention blocks and, after a global search, every unit's allocation."""
    refit = {f["layer"]: f for f in fits}
    attention = []
    for group in head_groups:
        before, after = sizes.get(group.name, (group.heads, group.heads))
        entry = {"kind": "heads", "block": group.name, "heads": before, "kept": after, "head_dim": group.head_dim}
        if group.output.name in refit:
            entry["error_before_refit"] = round(refit[group.output.name]["error_before"], 5)
            entry["error_after_refit"] = round(refit[group.output.name]["error_after"], 5)
        attention.append(entry)
    out = {"attention": attention, "attention_blocked": blocked}
    if search is not None:
        allocation = []
        for unit in search.units:
            kept = search.kept[unit.name]
            row = {"kind": unit.kind, "unit": unit.name, "size": unit.size, "kept": kept, "predicted_output_error": round(unit.cost.get(kept, 0.0), 6)}
            for consumer in unit.consumers:
                fit = refit.get(consumer.node.name)
                if fit is not None and kept < unit.size:
                    row.setdefault("refit", []).append({"layer": fit["layer"], "error_before": round(fit["error_before"], 5), "error_after": round(fit["error_after"], 5)})
            allocation.append(row)
        out["allocation"] = allocation
    return out
