"""Global mask search: rank inside every unit, measure each unit's output cost, allocate the MACs.

This is the post-training recipe of Kwon et al. 2022 on an ONNX graph, with the Fisher estimate
replaced by the measured output error of each unit at each size (importance.py): heads and FFN
neurons (or conv channels) of every layer compete for one MACs budget (budget.py), and which
classes of a unit go is decided by greedy OBS on its consumers (the mask rearrangement step).
The least-squares mask tuning is reconstruct.refit_layers, run by the pass after removal.

Costs measured one unit at a time add up to less than the damage of pruning them together
(MiniLM-L6 at 0.6x MACs: summed unit costs ~0.36 of relative output error, far below what the
pruned model lost), so the search can run in rounds: each round re-measures every unit's cost on
the model as pruned so far and spends its share of the budget. Probe errors leave out padding
positions (the token mask the attention blocks are built from), which no real token attends to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import export_model
from onnxopt.passes.prune.budget import allocate, channel_levels, head_levels, interpolate
from onnxopt.passes.prune.groups import Analysis, ChannelGroup
from onnxopt.passes.prune.heads import HeadGroup, token_mask_input
from onnxopt.passes.prune.importance import Prober, Unit, channel_consumers, head_consumer, head_ranking
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
    joint_output_error: float | None = None  # relative output error of the whole plan, before refit


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
    rounds: int = 1,
) -> SearchResult:
    """Masks for channel groups and kept heads meeting `keep_fraction` of the MACs at least output cost.

    With `rounds` > 1 the budget is spent in equal parts: each round re-measures every unit's cost
    curve on the model as pruned so far (the other units at their committed sizes) and commits
    the next part, so units whose damage compounds are seen together, not priced apart."""
    units = [Unit("channels", f"channels:{g.gid}:{g.name}", g.n_classes, g, channel_consumers(g)) for g in channel_groups]
    units += head_units(head_groups)
    # compensation is fit on one half of the calibration samples and judged on the other, so a
    # unit's cost is what the pruned model loses on data its refit has not seen
    fit, probe = (samples[0::2], samples[1::2]) if len(samples) > 1 else (samples, samples)
    grams = _grams(graph, units, fit, rows_per_sample, seed, gram_memory_mb)

    allowed: dict[str, list[int]] = {}
    measured: dict[str, list[int]] = {}
    for unit in units:
        if unit.kind == "channels":
            group = unit.group
            ranking = obs_ranking(group, grams, keep_at_least=min(min_channels, group.n_classes))
            unit.ranking = ranking if ranking is not None else group_importance(group, "l2")
            allowed[unit.name], measured[unit.name] = channel_levels(group.n_classes, round_to, min_channels)
        else:
            allowed[unit.name] = measured[unit.name] = head_levels(unit.size)
    rank_heads([u for u in units if u.kind == "heads"], grams)

    probe = probe[:probe_samples]
    reference_session = make_session(export_model(graph), opt_level="basic")
    reference = [reference_session.run(None, feeds) for feeds in probe]
    prober = Prober(graph, units, grams, probe, reference, token_mask_input(graph, head_groups), compensation)

    counted = sum(node_macs.get(id(m.node), 0) for m in analysis.mac_nodes)
    other = total_macs - counted
    full = predicted_macs(analysis, node_macs, {})
    masks_at: dict[tuple[str, int], np.ndarray] = {}
    for unit in units:
        if unit.kind == "channels":
            for level in allowed[unit.name]:
                mask = unit.keep_mask(level)
                masks_at[unit.name, level] = mask
                unit.saved[level] = full - (predicted_macs(analysis, node_macs, {unit.group.gid: mask}) if level < unit.size else full)
        else:
            per_head = sum(node_macs.get(id(n), 0) for n in unit.group.mac_nodes) / unit.size
            unit.saved = {level: per_head * (unit.size - level) for level in allowed[unit.name]}

    def macs_of(kept: dict[str, int]) -> float:
        masks = {u.group.gid: masks_at[u.name, kept[u.name]] for u in units if u.kind == "channels" and kept[u.name] < u.size}
        heads_saved = sum(u.saved[kept[u.name]] for u in units if u.kind == "heads")
        return other + predicted_macs(analysis, node_macs, masks) - heads_saved

    def pruned_weights(kept: dict[str, int]) -> dict[str, np.ndarray]:
        weights = {}
        for u in units:
            if kept[u.name] < u.size:
                weights.update(prober.weights(u, kept[u.name]))
        return weights

    kept = {u.name: u.size for u in units}
    rounds = max(1, rounds)
    for r in range(1, rounds + 1):
        base = pruned_weights(kept)
        base_error = prober.error(base) if base else 0.0
        for unit in units:
            now = kept[unit.name]
            below = [k for k in allowed[unit.name] if k < now]
            probes = sorted({k for k in measured[unit.name] if k < now} | set(below[:1]), reverse=True)
            unit.cost = {now: 0.0}
            for level in probes:
                unit.cost[level] = max(prober.error({**base, **prober.weights(unit, level)}) - base_error, 0.0)
            interpolate(unit, [now] + below)
        target = total_macs * (1 - (1 - keep_fraction) * r / rounds)
        kept, predicted = allocate(units, macs_of, target, start=kept)

    for unit in units:  # each unit's error at its chosen size with every other unit whole, for the report
        unit.cost = {unit.size: 0.0}
        if kept[unit.name] < unit.size:
            unit.cost[kept[unit.name]] = prober.error(prober.weights(unit, kept[unit.name]))
    joint = prober.error(pruned_weights(kept))
    masks = {u.group.gid: masks_at[u.name, kept[u.name]] for u in units if u.kind == "channels" and kept[u.name] < u.size}
    heads = {}
    for i, group in enumerate(head_groups):
        unit = next(u for u in units if u.group is group)
        if kept[unit.name] < unit.size:
            heads[i] = np.flatnonzero(unit.keep_mask(kept[unit.name]))
    return SearchResult(masks, heads, units, kept, predicted, joint)


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
        if search.joint_output_error is not None:
            out["predicted_joint_output_error"] = round(search.joint_output_error, 6)
    return out


def pruned_report(report: dict, analysis: Analysis, head_groups: list[HeadGroup], head_sizes: dict[str, tuple[int, int]], fits: list[dict]) -> dict:
    """What was actually pruned, one entry per group (kind, size, kept, refit error before/after
    of the layers reading it), and the channel analysis's blocked list without the Q/K/V and
    context groups that heads.py pruned as heads (they are blocked only as channel groups)."""
    refit = {f["layer"]: f for f in fits}
    by_gid = {g.gid: g for g in analysis.groups}

    def errors(nodes) -> list[dict]:
        return [{"layer": n.name, "error_before": round(refit[n.name]["error_before"], 5), "error_after": round(refit[n.name]["error_after"], 5)}
                for n in nodes if n.name in refit]

    pruned = []
    for entry in report.get("groups", []):
        if entry["kept"] < entry["channels"]:
            group = by_gid[entry["group"]]
            readers = list({id(d.node): d.node for d in group.dims_of("in")}.values())
            pruned.append({"kind": "channels", "group": group.name, "size": entry["channels"], "kept": entry["kept"], "refit": errors(readers)})
    head_nodes = {}
    for group in head_groups:
        before, after = head_sizes.get(group.name, (group.heads, group.heads))
        if after < before:
            pruned.append({"kind": "heads", "group": group.name, "size": before, "kept": after, "head_dim": group.head_dim, "refit": errors([group.output])})
            for node in group.mac_nodes:
                head_nodes[id(node)] = group.name
    blocked, as_heads = [], []
    for entry in report.get("blocked", []):
        group = by_gid.get(entry["group"])
        nodes = ([] if group is None else group.producers + group.consumers + [d.node for d in group.dims if d.node is not None])
        block = next((head_nodes[id(n)] for n in nodes if id(n) in head_nodes), None)
        if block is None:
            blocked.append(entry)
        else:
            as_heads.append({**entry, "pruned_as_heads_of": block})
    return {"pruned": pruned, "blocked": blocked, "blocked_as_channels_pruned_as_heads": as_heads}
