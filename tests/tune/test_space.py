"""The search space table: what each knob does to the recipe, in the order the targets compose passes."""

from __future__ import annotations

import optuna
import pytest

from onnxopt.errors import ConfigError
from onnxopt.recipes import insert_structural_passes, load_target
from onnxopt.tune.space import (
    Knob,
    check_targets,
    default_params,
    knobs,
    recipe_for,
    suggest,
)


def test_int8_recipe_with_structural_passes_composes_like_the_cli():
    table = knobs(("ort-int8", "ort-fp32"))
    params = {"target": "ort-int8", "int8_max_drop": 0.3, "int8_calibrator": "percentile", "int8_max_fallback": 0.5,
              "int8_final_layer": "int8", "prune_flops": 0.45, "depthwise": True, "depthwise_flops": 0.8}
    recipe = recipe_for(params, table)
    assert [p["name"] for p in recipe.extra_passes()] == ["depthwise-separable", "channel-prune"]
    # options equal to the pass's defaults are left out; the others become --set overrides
    assert recipe.overrides == ["quantize-int8.max_drop=0.3", "quantize-int8.calibrator=percentile"]
    assert recipe.cli_args() == ["--target", "ort-int8", "--depthwise", "--depthwise-flops", "0.8", "--prune-flops", "0.45",
                                 "--set", "quantize-int8.max_drop=0.3", "--set", "quantize-int8.calibrator=percentile"]
    names = [p["name"] for p in insert_structural_passes(load_target("ort-int8"), recipe.extra_passes())["passes"]]
    assert names.index("depthwise-separable") < names.index("channel-prune") < names.index("fusion") < names.index("quantize-int8")


def test_float_target_draws_no_int8_knobs_and_no_pruning_at_one():
    study = optuna.create_study(directions=["maximize", "minimize"])
    table = knobs(("ort-fp32",))
    params = suggest(study.ask(), table)
    assert params["target"] == "ort-fp32"
    assert not any(name.startswith("int8_") for name in params)
    recipe = recipe_for({"target": "ort-fp32", "prune_flops": 1.0, "depthwise": False}, table)
    assert recipe.extra_passes() == [] and recipe.overrides == []


def test_default_params_are_each_targets_plain_recipe_then_the_hand_picked_compositions():
    table = knobs(("ort-int8", "ort-fp32"))
    starts = default_params(("ort-int8", "ort-fp32"), table)
    commands = [recipe_for(s, table).cli_args() for s in starts]
    assert commands[:5] == [["--target", "ort-int8"], ["--target", "ort-fp32"], ["--target", "ort-int8", "--prune-flops", "0.3"],
                            ["--target", "ort-int8", "--prune-flops", "0.5"], ["--target", "ort-fp32", "--prune-flops", "0.3"]]
    assert ["--target", "ort-int8", "--prune-flops", "0.3", "--set", "channel-prune.allocation=uniform"] in commands
    # every seed is a complete point of the space: the sampler draws nothing for it
    for start in starts:
        assert set(start) == set(suggest(optuna.trial.FixedTrial(start), table))
    # a float-only search gets no int8 seeds
    assert {s["target"] for s in default_params(("ort-fp32",), knobs(("ort-fp32",)))} == {"ort-fp32"}


def test_pruning_options_are_drawn_only_with_pruning_and_written_as_toml():
    table = knobs(("ort-fp32",))
    unpruned = suggest(optuna.trial.FixedTrial({"target": "ort-fp32", "drop_blocks": 0, "prune_flops": 1.0, "depthwise": False}), table)
    assert not any(name.startswith("prune_") and name != "prune_flops" for name in unpruned)
    params = {"target": "ort-fp32", "prune_flops": 0.4, "prune_allocation": "auto", "prune_probe_samples": 16, "prune_round_to": 16,
              "prune_scale_refit": False, "prune_propagate": True, "prune_compensation": "scale", "prune_search_rounds": 2, "depthwise": False}
    assert recipe_for(params, table).overrides == ["channel-prune.probe_samples=16", "channel-prune.round_to=16", "channel-prune.scale_refit=false",
                                                   "channel-prune.probe_compensation=scale", "channel-prune.search_rounds=2"]
    from onnxopt.recipes import apply_overrides

    recipe = apply_overrides(insert_structural_passes(load_target("ort-fp32"), recipe_for(params, table).extra_passes()),
                             recipe_for(params, table).overrides)
    prune = next(p for p in recipe["passes"] if p["name"] == "channel-prune")
    assert prune["scale_refit"] is False and prune["probe_samples"] == 16
    assert prune["probe_compensation"] == "scale" and prune["search_rounds"] == 2 and prune["round_to"] == 16


def test_a_new_knob_is_one_more_row():
    from optuna.distributions import CategoricalDistribution

    table = knobs(("ort-int8",)) + [Knob("int8_rounding", CategoricalDistribution(["nearest"]), lambda p: True,
                                         lambda r, v: r.overrides.append(f"quantize-int8.rounding={v}"))]
    params = suggest(optuna.create_study(directions=["maximize", "minimize"]).ask(), table)
    assert "quantize-int8.rounding=nearest" in recipe_for(params, table).overrides


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot be searched"):
        check_targets(("trt-int8",))


def test_drop_blocks_knob_comes_first_in_the_recipe_and_the_command():
    table = knobs(("ort-int8",))
    params = {"target": "ort-int8", "drop_blocks": 2, "prune_flops": 0.5, "prune_allocation": "uniform", "depthwise": False}
    recipe = recipe_for(params, table)
    assert [p["name"] for p in recipe.extra_passes()] == ["drop-blocks", "channel-prune"]
    assert recipe.extra_passes()[0]["count"] == 2
    assert recipe.cli_args()[:4] == ["--target", "ort-int8", "--drop-blocks", "2"]
    assert recipe_for({**params, "drop_blocks": 0}, table).extra_passes()[0]["name"] == "channel-prune"


def test_distillation_is_drawn_with_pruning_and_written_as_its_flag():
    pytest.importorskip("jax", reason="the distill extra (jax) is not installed")
    table = knobs(("ort-fp32",))
    unpruned = suggest(optuna.trial.FixedTrial({"target": "ort-fp32", "drop_blocks": 0, "prune_flops": 1.0, "depthwise": False}), table)
    assert "prune_distill" not in unpruned
    recipe = recipe_for({"target": "ort-fp32", "prune_flops": 0.5, "prune_allocation": "uniform", "prune_distill": 500, "depthwise": False}, table)
    assert [e["name"] for e in recipe.extra_passes()] == ["channel-prune", "distill"] and recipe.extra_passes()[-1]["steps"] == 500
    assert "--prune-flops 0.5 --distill 500" in " ".join(recipe.cli_args())
