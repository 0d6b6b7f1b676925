"""`fusion`: every fusion theme applied together to a joint fixed point, with CSE between rounds.

Rules enable one another (a Div becomes a Mul that folds into a Conv; CSE merges the shape
arithmetic that then cancels), so running them as one set until nothing fires gives fewer nodes
than running each theme once, and one graph walk per round costs less than one per theme.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxopt.errors import ConfigError
from onnxopt.graphs import iter_graphs, node_count
from onnxopt.passes.fusion.activation import ACTIVATION_RULES
from onnxopt.passes.fusion.batchnorm import BATCHNORM_RULES
from onnxopt.passes.fusion.conv_affine import CONV_AFFINE_RULES
from onnxopt.passes.fusion.cse import eliminate_common_subexpressions
from onnxopt.passes.fusion.elementwise import ELEMENTWISE_RULES
from onnxopt.passes.fusion.gelu import GELU_RULES
from onnxopt.passes.fusion.gemm import GEMM_RULES
from onnxopt.passes.fusion.layernorm import LAYERNORM_RULES
from onnxopt.passes.fusion.layout import LAYOUT_RULES
from onnxopt.passes.fusion.noop import NOOP_RULES
from onnxopt.passes.fusion.pad import PAD_RULES
from onnxopt.passes.fusion.rules import apply_rules, raise_opset_for
from onnxopt.passes.fusion.skip_layernorm import SKIP_LAYERNORM_RULES
from onnxopt.pipeline import Pass, PassContext, PassResult, option, register_pass

THEMES = {
    "noop": NOOP_RULES,
    "layout": LAYOUT_RULES,
    "arithmetic": ELEMENTWISE_RULES,
    "batchnorm": BATCHNORM_RULES,
    "conv-affine": CONV_AFFINE_RULES,
    "pad": PAD_RULES,
    "gemm": GEMM_RULES,
    "layernorm": LAYERNORM_RULES,
    "gelu": GELU_RULES,
    "skip-layernorm": SKIP_LAYERNORM_RULES,
    "activation": ACTIVATION_RULES,
}


@dataclass
class FusionConfig:
    skip: tuple[str, ...] = option((), f"themes or rule class names to leave out; themes: {', '.join(THEMES)}")
    cse: bool = option(True, "merge common subexpressions between rounds")
    raise_opset: bool = option(True, "raise the model's opset (when safe) so LayerNorm/Gelu can be standard ops")
    max_rounds: int = option(4, "rounds of rules + CSE before giving up on a fixed point")


@register_pass
class Fusion(Pass):
    """All exact fusions (see the theme modules) to a joint fixed point."""

    name = "fusion"
    exact = True
    Config = FusionConfig
    description = "all exact fusions (BN folding, conv affine, pad, gemm, layout, no-ops, LayerNorm, GELU, ...) + CSE"

    def rules(self) -> list[type]:
        names = {r.__name__ for rules in THEMES.values() for r in rules}
        unknown = sorted(set(self.config.skip) - set(THEMES) - names)
        if unknown:
            raise ConfigError(f"fusion.skip: unknown theme or rule {', '.join(unknown)}; themes: {', '.join(THEMES)}")
        return [r for theme, rules in THEMES.items() if theme not in self.config.skip for r in rules if r.__name__ not in self.config.skip]

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        rules = self.rules()
        before = node_count(graph)
        opset_before = int(graph.opset)
        stats: dict[str, int] = {}
        refused: Counter = Counter()
        for _ in range(max(self.config.max_rounds, 1)):
            if self.config.raise_opset:
                raise_opset_for(graph, rules, ctx)
            counts = apply_rules(graph, rules, ctx, refused=refused)
            for key, value in counts.items():
                stats[key] = stats.get(key, 0) + value
            merged = sum(eliminate_common_subexpressions(sub) for sub in list(iter_graphs(graph))) if self.config.cse else 0
            if merged:
                stats["cse"] = stats.get("cse", 0) + merged
            if not counts and not merged:
                break
        if int(graph.opset) != opset_before:
            stats["opset"] = int(graph.opset)
        stats = dict(sorted(stats.items()))
        changed = bool(stats) or node_count(graph) != before
        if refused:
            stats["refused"] = dict(sorted(refused.items()))
        return PassResult(changed=changed, stats=stats)
