"""channel-prune: remove whole channels (Conv filters, Gemm/MatMul columns) and refit what reads them.

The dependency analysis (groups.py) finds the channels that must go together; the importance
criterion and budget (plan.py) choose which to keep; removal.py slices every tensor and weight of
each pruned group, so the model gets physically smaller and faster. Without retraining, the
layers that read a pruned group are then refit by least squares on calibration data so their
outputs match the teacher's (reconstruct.refit_layers, He et al. 2017 / ThiNet).

Attention heads (heads.py) are groups too. With a FLOPs target and calibration data the budget is
global (search.py): every channel group and attention block gets an output-error cost curve and
MACs go where they cost least; otherwise one uniform ratio applies, as in the first round.

Lossy by design (exact = False): the report records MACs and parameters before and after, the
ratio of every group, the groups left alone and why, and each refit layer's error on the
calibration data before and after its refit.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.errors import CalibrationError, ConfigError
from onnxopt.graphs import export_model
from onnxopt.passes.prune.groups import Analysis, ChannelGroup, analyse
from onnxopt.passes.prune.heads import find_attention, remove_heads
from onnxopt.passes.prune.plan import group_importance, plan, ratio_for_flops
from onnxopt.passes.prune.removal import remove_channels
from onnxopt.passes.prune.search import SearchResult, attention_report, global_search, pruned_report, uniform_heads
from onnxopt.passes.prune.selection import obs_ranking
from onnxopt.passes.reconstruct import (
    LayerTarget,
    channel_energy,
    depthwise,
    input_grams,
    refit_layers,
    refittable,
    residual_input,
)
from onnxopt.passes.structural import StructuralPass
from onnxopt.pipeline import PassContext, PassResult, option, register_pass

DEFAULT_RATIO = 0.3
AUTO_ROUNDS_ATTENTION = 4  # MiniLM-L6 at --prune-flops 0.6: see benchmarks/results/prune.md
DEFAULT_CRITERION = "obs"  # best measured with reconstruction on the Fashion-MNIST CNN (benchmarks/results/prune.md)


@dataclass
class ChannelPruneConfig:
    ratio: float | None = option(None, f"fraction of channels to remove from every prunable group ({DEFAULT_RATIO} when neither ratio nor flops_target is given)")
    flops_target: float | None = option(None, "keep at most this fraction of the model's MACs (0.5 = half); sets the uniform ratio by bisection")
    importance: Literal["auto", "l1", "l2", "bn", "activation", "obs"] = option("auto", f"channel importance; auto = {DEFAULT_CRITERION} with calibration data, l2 without")
    layer_ratios: dict = option(None, "per-layer ratios {producer-name-pattern: ratio}; override the uniform ratio for matching groups", default_factory=dict)
    skip: tuple[str, ...] = option((), "node-name patterns (fnmatch): groups touching a matching node are left whole")
    min_channels: int = option(8, "never keep fewer channels than this in a group")
    round_to: int = option(8, "round kept channel counts to a multiple of this, so kernels stay fast")
    reconstruct: bool = option(True, "refit the layers reading pruned channels by least squares on calibration data")
    calib_samples: int = option(64, "calibration samples used for importance and reconstruction")
    rows_per_sample: int = option(512, "output positions per sample used in each least-squares refit")
    ridge: float = option(1e-4, "ridge term of the refit, relative to the mean input energy")
    gram_memory_mb: int = option(1024, "memory for the input Gram matrices the obs criterion captures at once")
    allocation: Literal["auto", "uniform", "global"] = option("auto", "how a flops_target is spread: global = one budget over every group and attention block by measured output error (auto: global with calibration data); uniform = one ratio everywhere")
    heads: bool = option(True, "prune attention heads (Q/K/V columns, head count, output projection rows) as groups")
    probe_samples: int = option(32, "calibration samples on which the global allocation measures each group's output error")
    scale_refit: bool = option(True, "where calibration rows are few, let held-out rows choose between a full refit and rescaling the kept inputs (least-squares mask tuning)")
    propagate: bool = option(True, "a refit layer that feeds a residual Add also repairs the error earlier layers left in that stream")
    probe_compensation: Literal["scale", "full", "conv"] = option("conv", "how the global allocation compensates a probed unit's consumers: scale = rescale the kept inputs, full = least-squares refit over them (as reconstruction does), conv = full for Conv consumers (every output position is a row), scale for the others")
    contiguous_folds: bool = option(False, "held-out refit choices split the calibration samples into halves (not alternately), so consecutive samples of one source stay in one fold")
    protect_classifier: bool = option(False, "with one uniform ratio, leave whole the channels read by a layer that writes a graph output (a classifier's input); the global allocation prices them like any group")
    refit_downstream: Literal["none", "conv", "all"] = option("none", "also refit the layers after the first pruned one that read no pruned channel (conv: Conv layers only), so they absorb the error pruning left in their inputs; each keeps its weights unless held-out calibration rows favour the refit")
    search_rounds: int = option(0, "rounds of the global allocation: each re-measures the cost curves on the model as pruned so far and spends its share of the budget (0 = auto: 4 with attention blocks, where joint damage outgrows the per-unit costs; 1 otherwise)")


def _check_config(cfg: ChannelPruneConfig) -> None:
    if cfg.ratio is not None and cfg.flops_target is not None:
        raise ConfigError("channel-prune: give either ratio (--prune) or flops_target (--prune-flops), not both")
    if cfg.ratio is not None and not 0.0 <= cfg.ratio < 1.0:
        raise ConfigError(f"channel-prune: ratio must be in [0, 1), got {cfg.ratio}")
    if cfg.flops_target is not None and not 0.0 < cfg.flops_target <= 1.0:
        raise ConfigError(f"channel-prune: flops_target is the fraction of MACs to keep, in (0, 1]; got {cfg.flops_target}")
    for pattern, value in cfg.layer_ratios.items():
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"channel-prune: layer_ratios[{pattern!r}] must be a ratio in [0, 1), got {value!r}")
    if cfg.search_rounds < 0:
        raise ConfigError(f"channel-prune: search_rounds must be 0 (auto) or a positive number of rounds, got {cfg.search_rounds}")
    if cfg.min_channels < 1 or cfg.round_to < 1:
        raise ConfigError("channel-prune: min_channels and round_to must be at least 1")


def _features(dim) -> int:
    """Input features of a consumer: channels times kernel positions."""
    weight = dim.node.inputs[dim.index]
    shape = weight.shape if weight.shape is not None else ()
    return int(dim.length * (np.prod(shape[2:]) if dim.node.op == "Conv" and len(shape) > 2 else 1))


def _touches(group: ChannelGroup, patterns: tuple[str, ...]) -> bool:
    names = [n.name for n in group.producers + group.consumers]
    names += [d.node.name for d in group.dims if d.node is not None]
    return any(fnmatch.fnmatchcase(name, p) for name in names for p in patterns)


def _feeds_output(group: ChannelGroup, outputs: set[str]) -> bool:
    """Whether a layer reading the group writes a graph output (a classifier reading every channel)."""
    return any(t.name in outputs for node in group.consumers for t in node.outputs)


def _describe(group: ChannelGroup) -> dict:
    return {"group": group.gid, "producers": [p.name for p in group.producers][:8], "channels": group.n_classes}


@register_pass
class ChannelPrune(StructuralPass):
    """Structured channel pruning with dependency groups, importance, budget, removal and reconstruction."""

    name = "channel-prune"
    Config = ChannelPruneConfig
    description = "remove whole channels (groups found by dependency analysis) and refit consumers against the teacher"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        cfg = self.config
        _check_config(cfg)
        before, node_macs_at = self.costs_before(graph, ctx)
        analysis: Analysis = ctx.analysis("channel-groups", lambda: analyse(graph))
        calibration = self.sample(ctx)
        criterion = self._criterion(calibration, ctx)

        candidates = []
        skipped = []
        outputs = {t.name for t in graph.outputs}
        uniform = not self._global(calibration)
        for group in analysis.groups:
            if not group.prunable:
                continue
            if (cfg.skip and _touches(group, cfg.skip)) or (uniform and cfg.protect_classifier and _feeds_output(group, outputs)):
                skipped.append(group)
            else:
                candidates.append(group)

        head_groups, heads_blocked = find_attention(graph) if cfg.heads else ([], [])
        ratio = DEFAULT_RATIO if cfg.ratio is None and cfg.flops_target is None else (cfg.ratio or 0.0)
        search: SearchResult | None = None
        if self._global(calibration):
            samples = list(calibration)
            search = global_search(
                graph, analysis, candidates, head_groups, samples, node_macs_at, before["macs"], cfg.flops_target,
                round_to=cfg.round_to, min_channels=cfg.min_channels, rows_per_sample=cfg.rows_per_sample,
                probe_samples=cfg.probe_samples, gram_memory_mb=cfg.gram_memory_mb, seed=ctx.seed, compensation=cfg.probe_compensation,
                rounds=cfg.search_rounds or (AUTO_ROUNDS_ATTENTION if head_groups else 1),
            )
            masks, kept_heads, ratio = search.masks, search.heads, 0.0
            criterion = "output-error (global)"
            if search.predicted_macs > cfg.flops_target * before["macs"] * 1.001:
                ctx.warn(f"channel-prune: cannot reach {cfg.flops_target:.0%} of the MACs with the prunable groups; best plan keeps {search.predicted_macs / max(before['macs'], 1):.0%}")
        else:
            masks, ratio = self._uniform_masks(graph, analysis, candidates, calibration, criterion, ratio, node_macs_at, before, ctx)
            kept_heads = uniform_heads(graph, head_groups, ratio, calibration, cfg.rows_per_sample, ctx.seed) if cfg.ratio is not None else {}
        if not masks and not kept_heads:
            self.publish(ctx, self._report(analysis, candidates, skipped, masks, before, before, ratio, criterion, [], ctx))
            return PassResult(changed=False, stats={"groups_pruned": 0, "blocked": sum(1 for g in analysis.groups if g.blocked)})

        reference_before = self.reference_before(graph, calibration)
        kept = remove_channels(graph, analysis, masks)
        head_sizes = {}
        for index, heads_kept in kept_heads.items():
            group = head_groups[index]
            head_sizes[group.name] = (group.heads, len(heads_kept))
            remove_heads(graph, group, heads_kept)
        graph.cleanup().toposort()

        fits = []
        if cfg.reconstruct and calibration is not None:
            heads_refit = [head_groups[i].output for i in kept_heads]
            # their outputs lost head columns the teacher still has: no downstream refit target
            narrowed = {id(n) for i in kept_heads for p in head_groups[i].projections for n in (p.matmul, p.bias) if n is not None}
            fits = self._reconstruct(graph, analysis, kept, reference_before, calibration, ctx, heads_refit, narrowed)
        elif cfg.reconstruct:
            ctx.warn("channel-prune: no calibration data, so pruned layers are not reconstructed; pass --calib DATA to refit them")

        after = self.costs_after(graph, ctx)
        report = self._report(analysis, candidates, skipped, masks, before, after, ratio, criterion, fits, ctx)
        report.update(attention_report(head_groups, heads_blocked, head_sizes, search, fits))
        report.update(pruned_report(report, analysis, head_groups, head_sizes, fits))
        self.publish(ctx, report)
        ctx.artifacts["channel-prune"] = {"kept": {k: v.tolist() for k, v in kept.items()}, "heads": {n: k for n, (_, k) in head_sizes.items()}}
        return PassResult(
            changed=True,
            stats={
                "groups_pruned": len(masks),
                "heads_removed": sum(n - k for n, k in head_sizes.values()),
                "macs_before": before["macs"],
                "macs_after": after["macs"],
                "params_before": before["parameters"],
                "params_after": after["parameters"],
                "layers_refit": len(fits),
            },
        )

    def _global(self, calibration) -> bool:
        """Whether a flops target is spread by the global output-error allocation."""
        cfg = self.config
        if cfg.flops_target is None or cfg.allocation == "uniform":
            return False
        if calibration is None:
            if cfg.allocation == "global":
                raise CalibrationError("channel-prune: allocation=global measures output error on calibration data; pass --calib DATA or set allocation=uniform")
            return False
        return True

    def _uniform_masks(self, graph, analysis, candidates, calibration, criterion, ratio, node_macs_at, before, ctx) -> tuple[dict[int, np.ndarray], float]:
        """The first round's plan: one ratio for every group (bisected for a flops target)."""
        cfg = self.config
        energy = None
        if criterion == "activation":
            energy = self._energy(graph, analysis, candidates, calibration)
        if criterion == "obs":
            scores = self._obs_scores(graph, candidates, calibration, ctx)
        else:
            scores = {g.gid: group_importance(g, criterion, energy) for g in candidates}
        counts = None
        if cfg.flops_target is not None:
            ratio, predicted, counts = ratio_for_flops(
                analysis, candidates, scores, cfg.flops_target, cfg.layer_ratios, cfg.round_to, cfg.min_channels, node_macs_at, before["macs"]
            )
            if predicted > cfg.flops_target * before["macs"] * 1.001:
                ctx.warn(f"channel-prune: cannot reach {cfg.flops_target:.0%} of the MACs with the prunable groups; best plan keeps {predicted / max(before['macs'], 1):.0%}")
        return plan(candidates, scores, ratio, cfg.layer_ratios, cfg.round_to, cfg.min_channels, counts), ratio

    def _criterion(self, calibration, ctx: PassContext) -> str:
        requested = self.config.importance
        if requested == "auto":
            return DEFAULT_CRITERION if calibration is not None else "l2"
        if requested in ("activation", "obs") and calibration is None:
            raise CalibrationError(f"channel-prune: importance={requested} needs calibration data; pass --calib DATA or choose l1, l2 or bn")
        return requested

    def _energy(self, graph: gs.Graph, analysis: Analysis, groups: list[ChannelGroup], calibration) -> dict[str, np.ndarray]:
        axes = {}
        for group in groups:
            for dim in group.dims_of("in"):
                x = dim.node.inputs[0]
                if x.name in analysis.dims:
                    axes[x.name] = analysis.dims[x.name].axis
        return channel_energy(export_model(graph), axes, calibration)

    def _obs_scores(self, graph: gs.Graph, groups: list[ChannelGroup], calibration, ctx: PassContext) -> dict[int, np.ndarray]:
        """Greedy OBS ranking per group, capturing consumers' input Gram matrices in memory-bounded batches."""
        model = export_model(graph)
        scores: dict[int, np.ndarray] = {}
        batch, batch_bytes = [], 0

        def flush():
            nodes = list({id(d.node): d.node for g in batch for d in g.dims_of("in") if refittable(d.node) is None}.values())
            grams = input_grams(model, nodes, calibration, rows_per_sample=self.config.rows_per_sample, seed=ctx.seed)
            for group in batch:
                ranking = obs_ranking(group, grams, keep_at_least=min(self.config.min_channels, group.n_classes))
                scores[group.gid] = ranking if ranking is not None else group_importance(group, "l2")
            batch.clear()

        for group in groups:
            size = sum(_features(d) ** 2 * 8 for d in group.dims_of("in"))
            if batch and batch_bytes + size > self.config.gram_memory_mb * 2**20:
                flush()
                batch_bytes = 0
            batch.append(group)
            batch_bytes += size
        if batch:
            flush()
        return scores

    def _reconstruct(self, graph, analysis, kept, reference_before, calibration, ctx, extra_nodes=(), narrowed=frozenset()) -> list[dict]:
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        targets, seen = [], set(narrowed)
        for node, in_key in analysis.refit:
            if in_key not in kept or id(node) in seen or id(node) not in order:
                continue
            seen.add(id(node))
            why = refittable(node)
            if why:
                ctx.warn(f"channel-prune: {node.name}: not refit ({why})")
                continue
            out = node.outputs[0].name
            original = analysis.dims[out].length if out in analysis.dims else None
            reference = self.reference_for(out, ctx, reference_before)
            targets.append(LayerTarget(node, reference, out, kept.get(out), original, reference_before, self._correction(node, reference, ctx)))
        for node in extra_nodes:  # output projections of pruned attention blocks: same outputs, fewer inputs
            if id(node) in seen or id(node) not in order:
                continue
            seen.add(id(node))
            out = node.outputs[0].name
            reference = self.reference_for(out, ctx, reference_before)
            targets.append(LayerTarget(node, reference, out, None, None, reference_before, self._correction(node, reference, ctx)))
        cfg = self.config
        if cfg.refit_downstream != "none" and targets:
            touched = [order[id(analysis.dims[key].node)] for key in kept if analysis.dims[key].node is not None and id(analysis.dims[key].node) in order]
            targets += self._downstream(graph, analysis, kept, reference_before, ctx, seen, min(touched, default=len(order)))
        targets.sort(key=lambda t: order[id(t.node)])
        return refit_layers(
            graph, targets, calibration, rows_per_sample=cfg.rows_per_sample, ridge=cfg.ridge, seed=ctx.seed,
            scale_refit=cfg.scale_refit, keep_if_better=cfg.refit_downstream != "none", contiguous_folds=cfg.contiguous_folds,
        )

    def _downstream(self, graph, analysis, kept, reference_before, ctx, seen, first: int) -> list[LayerTarget]:
        """Refit targets for every other layer from the first pruned one on (depthwise convs per
        channel): their inputs carry the error pruning left upstream, their outputs can still
        match the teacher."""
        targets = []
        for node in graph.nodes[first:]:
            if id(node) in seen or (refittable(node) is not None and not depthwise(node)) or (self.config.refit_downstream == "conv" and node.op != "Conv"):
                continue
            out = node.outputs[0].name
            reference = self.reference_for(out, ctx, reference_before)
            if reference is None:
                continue
            seen.add(id(node))
            original = analysis.dims[out].length if out in analysis.dims else None
            targets.append(LayerTarget(node, reference, out, kept.get(out), original, reference_before, self._correction(node, reference, ctx)))
        return targets

    def _correction(self, node, reference, ctx) -> str | None:
        """The residual stream the layer writes into, when the reference model has that tensor too."""
        if not self.config.propagate:
            return None
        name = residual_input(node)
        if name is None or (reference is ctx.teacher and self.reference_for(name, ctx, None) is None):
            return None
        return name

    def _report(self, analysis, candidates, skipped, masks, before, after, ratio, criterion, fits, ctx) -> dict:
        groups = []
        for group in candidates:
            kept = int(masks[group.gid].sum()) if group.gid in masks else group.n_classes
            groups.append({**_describe(group), "kept": kept, "ratio": round(1 - kept / group.n_classes, 4)})
        blocked = [{**_describe(g), "reasons": g.blocked} for g in analysis.groups if g.blocked]
        report = {
            "criterion": criterion,
            "ratio": round(ratio, 4),
            "macs_before": before["macs"],
            "macs_after": after["macs"],
            "macs_ratio": round(after["macs"] / before["macs"], 4) if before["macs"] else None,
            "params_before": before["parameters"],
            "params_after": after["parameters"],
            "groups_pruned": len(masks),
            "groups": groups,
            "blocked": blocked,
            "skipped": [_describe(g) for g in skipped],
            "reconstruction": fits,
        }
        return report
