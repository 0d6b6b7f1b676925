"""The search space of `onnxopt tune`, declared once as a table of knobs.

Each knob names an Optuna distribution, when it applies (given the knobs drawn before it), and how
its value changes the recipe: the target, a structural pass from the CLI flags (depthwise, then
channel pruning, as `insert_structural_passes` places them: substitute, prune, fuse, quantize), or
a `--set pass.key=value` override. Fusion is always on: every target includes it. A new pass adds
its knobs by appending rows to KNOBS; the sampler, the trial and the reproducing command line all
read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)

from onnxopt.errors import ConfigError

SEARCHABLE_TARGETS = ("ort-int8", "ort-fp32", "ort-fp16")


@dataclass
class Recipe:
    """What one trial compiles: a target, structural passes, and single-option overrides."""

    target: str
    depthwise: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    drop_blocks: int = 0
    distill: int = 0
    overrides: list[str] = field(default_factory=list)

    def extra_passes(self) -> list[dict[str, Any]]:
        """In the order the CLI's flags add them: drop blocks, substitute, prune, then distill."""
        entries = []
        if self.drop_blocks:
            entries.append({"name": "drop-blocks", "count": self.drop_blocks})
        if self.depthwise is not None:
            entries.append({"name": "depthwise-separable", **self.depthwise})
        if self.prune is not None:
            entries.append({"name": "channel-prune", **self.prune})
        if self.distill:
            entries.append({"name": "distill", "steps": self.distill})
        return entries

    def cli_args(self) -> list[str]:
        """The `onnxopt compile` flags that build the same model."""
        args = ["--target", self.target]
        if self.drop_blocks:
            args += ["--drop-blocks", str(self.drop_blocks)]
        if self.depthwise is not None:
            args.append("--depthwise")
            if "flops_target" in self.depthwise:
                args += ["--depthwise-flops", f"{self.depthwise['flops_target']:g}"]
        if self.prune is not None and "flops_target" in self.prune:
            args += ["--prune-flops", f"{self.prune['flops_target']:g}"]
        if self.distill:
            args += ["--distill", str(self.distill)]
        for item in self.overrides:
            args += ["--set", item]
        return args


@dataclass(frozen=True)
class Knob:
    name: str
    distribution: BaseDistribution
    applies: Callable[[dict[str, Any]], bool]
    apply: Callable[[Recipe, Any], None]
    help: str = ""


def _is_int8(params: dict[str, Any]) -> bool:
    return str(params.get("target", "")).endswith("int8")


def pass_default(pass_name: str, option_name: str) -> Any:
    """The option's default in the registered pass, so overrides equal to it can be left out."""
    import dataclasses

    from onnxopt.pipeline import get_pass

    for f in dataclasses.fields(get_pass(pass_name).Config):
        if f.name == option_name:
            return f.default
    raise ConfigError(f"pass {pass_name} has no option {option_name}")


def _override(pass_name: str, option_name: str) -> Callable[[Recipe, Any], None]:
    def apply(recipe: Recipe, value: Any) -> None:
        if value != pass_default(pass_name, option_name):
            text = str(value).lower() if isinstance(value, bool) else value  # --set values are TOML
            recipe.overrides.append(f"{pass_name}.{option_name}={text}")

    return apply


def _set_target(recipe: Recipe, value: str) -> None:
    recipe.target = value


def _prune(recipe: Recipe, value: float) -> None:
    if value < 1.0:
        recipe.prune = {"flops_target": round(float(value), 4)}


def _drop_blocks(recipe: Recipe, value: int) -> None:
    recipe.drop_blocks = int(value)


def _depthwise(recipe: Recipe, value: bool) -> None:
    if value:
        recipe.depthwise = {}


def _depthwise_flops(recipe: Recipe, value: float) -> None:
    if recipe.depthwise is not None:
        recipe.depthwise["flops_target"] = round(float(value), 4)


def _distill(recipe: Recipe, value: int) -> None:
    recipe.distill = int(value)


def always(params: dict[str, Any]) -> bool:
    return True


def _can_distill(params: dict[str, Any]) -> bool:
    """Distillation repairs pruning, and needs the distill extra (JAX) where the search runs."""
    import importlib.util

    return _prunes(params) and importlib.util.find_spec("jax") is not None


def _prunes(params: dict[str, Any]) -> bool:
    return float(params.get("prune_flops", 1.0)) < 1.0


def _global_prune(params: dict[str, Any]) -> bool:
    return _prunes(params) and params.get("prune_allocation") == "auto"


# fine steps: the fastest feasible recipes sit on the accuracy cliff of the pruning ratio
PRUNE_FLOPS = FloatDistribution(0.15, 1.0, step=0.025)


def knobs(targets: tuple[str, ...]) -> list[Knob]:
    """The table: order matters only for conditions (a knob may look at the ones above it)."""
    return [
        Knob("target", CategoricalDistribution(list(targets)), always, _set_target, "precision: float or int8"),
        Knob("int8_max_drop", CategoricalDistribution([0.02, 0.05, 0.1, 0.15, 0.3, 1.0, -1.0]), _is_int8,
             _override("quantize-int8", "max_drop"), "quantizer's fidelity budget (cosine points); -1: no float fallback"),
        Knob("int8_calibrator", CategoricalDistribution(["mse", "percentile", "minmax"]), _is_int8,
             _override("quantize-int8", "calibrator"), "activation range calibrator"),
        Knob("int8_max_fallback", CategoricalDistribution([0.0, 0.1, 0.25, 0.5]), _is_int8,
             _override("quantize-int8", "max_fallback"), "most layers (fraction) kept in float"),
        Knob("int8_final_layer", CategoricalDistribution(["float", "int8"]), _is_int8,
             _override("quantize-int8", "final_layer"), "the classifier layer kept float or int8"),
        Knob("drop_blocks", CategoricalDistribution([0, 1, 2]), always, _drop_blocks,
             "residual blocks removed whole (depth pruning; nothing where the model has none)"),
        Knob("prune_flops", PRUNE_FLOPS, always, _prune, "MACs kept by channel pruning (1: no pruning)"),
        Knob("prune_allocation", CategoricalDistribution(["auto", "uniform"]), _prunes,
             _override("channel-prune", "allocation"), "MACs spread by measured output error (auto: global) or one ratio everywhere"),
        Knob("prune_probe_samples", CategoricalDistribution([8, 16, 32]), _global_prune,
             _override("channel-prune", "probe_samples"), "samples the global allocation measures errors on (fewer: a cheaper trial)"),
        Knob("prune_round_to", CategoricalDistribution([8, 16]), _prunes,
             _override("channel-prune", "round_to"), "kept channel counts rounded to a multiple of this (which runs faster is measured, per kernel and machine)"),
        Knob("prune_scale_refit", CategoricalDistribution([True, False]), _prunes,
             _override("channel-prune", "scale_refit"), "held-out rows choose between a full refit and rescaling"),
        Knob("prune_propagate", CategoricalDistribution([True, False]), _prunes,
             _override("channel-prune", "propagate"), "a refit feeding a residual Add repairs earlier layers' error too"),
        Knob("prune_compensation", CategoricalDistribution(["conv", "scale"]), _global_prune,
             _override("channel-prune", "probe_compensation"), "cost probes refit Conv consumers by least squares (conv) or rescale them"),
        Knob("prune_search_rounds", CategoricalDistribution([0, 1, 2, 4]), _global_prune,
             _override("channel-prune", "search_rounds"), "rounds of the global allocation, each re-measuring costs on the model as pruned so far (0: auto)"),
        Knob("prune_distill", CategoricalDistribution([0, 500]), _can_distill, _distill,
             "Adam steps of distillation against the original after pruning (0: none; needs onnxopt[distill])"),
        Knob("depthwise", CategoricalDistribution([False, True]), always, _depthwise, "depthwise-separable substitution"),
        Knob("depthwise_flops", FloatDistribution(0.4, 0.95, step=0.05), lambda p: bool(p.get("depthwise")),
             _depthwise_flops, "MACs kept by the substitution"),
    ]


def check_targets(targets: tuple[str, ...]) -> tuple[str, ...]:
    bad = [t for t in targets if t not in SEARCHABLE_TARGETS]
    if bad or not targets:
        raise ConfigError(f"--targets: {', '.join(bad) or '(none)'} cannot be searched; choose from {', '.join(SEARCHABLE_TARGETS)}")
    return tuple(dict.fromkeys(targets))


def suggest(trial, table: list[Knob]) -> dict[str, Any]:
    """Draw every knob that applies, define-by-run, so inactive knobs stay out of the trial."""
    params: dict[str, Any] = {}
    for knob in table:
        if knob.applies(params):
            params[knob.name] = _draw(trial, knob.name, knob.distribution)
    return params


def _draw(trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def recipe_for(params: dict[str, Any], table: list[Knob]) -> Recipe:
    recipe = Recipe(target=str(params.get("target", "ort-fp32")))
    for knob in table:
        if knob.name in params:
            knob.apply(recipe, params[knob.name])
    return recipe


# hand-picked compositions a user would try first (issue 14's table): int8 or float with pruning
SEEDS = (
    {"target": "ort-int8", "prune_flops": 0.3},
    {"target": "ort-int8", "prune_flops": 0.5},
    {"target": "ort-fp32", "prune_flops": 0.3},
    {"target": "ort-int8", "prune_flops": 0.4},
    {"target": "ort-int8", "prune_flops": 0.25},
    {"target": "ort-int8", "prune_flops": 0.3, "prune_allocation": "uniform"},
)


def default_params(targets: tuple[str, ...], table: list[Knob]) -> list[dict[str, Any]]:
    """Starting points enqueued first: each target's plain recipe, then the hand-picked compositions
    (SEEDS) for the targets searched, every other knob at its pass default."""
    defaults = {"int8_max_drop": ("quantize-int8", "max_drop"), "int8_calibrator": ("quantize-int8", "calibrator"),
                "int8_max_fallback": ("quantize-int8", "max_fallback"), "int8_final_layer": ("quantize-int8", "final_layer"),
                "prune_allocation": ("channel-prune", "allocation"), "prune_probe_samples": ("channel-prune", "probe_samples"),
                "prune_round_to": ("channel-prune", "round_to"),
                "prune_scale_refit": ("channel-prune", "scale_refit"), "prune_propagate": ("channel-prune", "propagate"),
                "prune_compensation": ("channel-prune", "probe_compensation"), "prune_search_rounds": ("channel-prune", "search_rounds")}
    plain = [{"target": target, "prune_flops": 1.0} for target in targets]
    seeds = [dict(seed) for seed in SEEDS if seed["target"] in targets]
    starts = []
    for chosen in plain + seeds:
        params: dict[str, Any] = {}
        for knob in table:  # in table order, so a knob's condition sees the ones above it
            if not knob.applies(params):
                continue
            if knob.name in chosen:
                params[knob.name] = chosen[knob.name]
            elif knob.name in defaults:
                params[knob.name] = pass_default(*defaults[knob.name])
            elif knob.name == "depthwise":
                params[knob.name] = False
            elif knob.name in ("drop_blocks", "prune_distill"):
                params[knob.name] = 0
        # a default the table cannot express is left for the sampler to draw
        by_name = {knob.name: knob for knob in table}
        starts.append({k: v for k, v in params.items() if k in by_name and _expressible(by_name[k].distribution, v)})
    return starts


def _expressible(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    return distribution.low <= value <= distribution.high
