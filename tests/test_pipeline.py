"""The pass manager: ordering, `changed`, configs, instruments, and verification naming a bad pass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from onnx import helper

import onnxopt
from onnxopt.errors import ConfigError, PassError, VerificationError
from onnxopt.graphs import import_graph
from onnxopt.pipeline import Pass, PassContext, PassManager, PassResult, make_config, option, register_pass, registered_passes
from onnxopt.recipes import apply_overrides, load_target
from tests.conftest import make_model, tensor


def relu_model():
    return make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])], [tensor("x", [1, 4])], [tensor("y", [1, 4])])


@register_pass
class _BreakOutputs(Pass):
    """Deliberately wrong: turns Relu into Sigmoid."""

    name = "test-break-outputs"
    exact = True

    def run(self, graph, ctx):
        changed = False
        for node in graph.nodes:
            if node.op == "Relu":
                node.op = "Sigmoid"
                changed = True
        return PassResult(changed)


@register_pass
class _Crash(Pass):
    name = "test-crash"

    def run(self, graph, ctx):
        raise RuntimeError("boom")


@dataclass
class _Cfg:
    ratio: float = option(0.5, "a ratio")
    names: tuple[str, ...] = option((), "names")
    flag: bool = option(False, "a flag")


class _Configured(Pass):
    name = "test-configured"
    Config = _Cfg

    def run(self, graph, ctx):
        return PassResult(False)


def test_registry_has_cleanup_passes():
    names = registered_passes()
    for expected in ("constant-folding", "dead-code-elimination", "dedup-initializers", "remove-identity", "shape-inference"):
        assert expected in names


def test_config_rejects_unknown_options_and_names_valid_ones():
    with pytest.raises(ConfigError, match="valid options: flag, names, ratio"):
        _Configured(bogus=1)
    cfg = make_config(_Cfg, {"ratio": "0.25", "names": "a,b", "flag": "true"}, "x")
    assert cfg == _Cfg(0.25, ("a", "b"), True)
    with pytest.raises(ConfigError, match="expected a number"):
        make_config(_Cfg, {"ratio": "lots"}, "x")


def test_manager_records_order_changed_and_counts():
    graph = import_graph(relu_model())
    from onnxopt.pipeline import get_pass

    passes = [get_pass("remove-identity")(), get_pass("dead-code-elimination")()]
    records = PassManager(passes).run(graph, PassContext())
    assert [r.name for r in records] == ["remove-identity", "dead-code-elimination"]
    assert records[0].changed and (records[0].nodes_before, records[0].nodes_after) == (2, 1)
    assert not records[1].changed


def test_only_if_ops_skips_a_pass_when_the_graph_lacks_those_ops():
    from onnxopt.pipeline import build_passes

    graph = import_graph(relu_model())
    passes = build_passes([{"name": "test-break-outputs", "only_if_ops": ["Shape", "Size"]}, {"name": "remove-identity", "only_if_ops": ["Identity"]}])
    records = PassManager(passes).run(graph, PassContext())
    assert not records[0].changed and records[0].stats == {"skipped": "no Shape/Size node"}
    assert [n.op for n in graph.nodes] == ["Relu"], "the skipped pass must not have run; the other must have"
    assert records[1].changed
    with pytest.raises(ConfigError, match="only_if_ops must be a list of op types"):
        build_passes([{"name": "remove-identity", "only_if_ops": "Shape"}])


def test_analysis_cache_dropped_when_a_pass_changes_the_graph():
    ctx = PassContext()
    calls = []
    ctx.analysis("k", lambda: calls.append(1) or len(calls))
    assert ctx.analysis("k", lambda: 99) == 1
    graph = import_graph(relu_model())
    from onnxopt.pipeline import get_pass

    PassManager([get_pass("remove-identity")()]).run(graph, ctx)
    assert ctx.analysis("k", lambda: 42) == 42


def test_crashing_pass_becomes_pass_error_naming_it():
    graph = import_graph(relu_model())
    with pytest.raises(PassError, match="test-crash failed: RuntimeError: boom"):
        PassManager([_Crash()]).run(graph, PassContext())


@pytest.mark.parametrize("mode", ["each", "end"])
def test_verification_catches_a_wrong_exact_pass(mode):
    recipe = {"name": "broken", "backend": "ort", "passes": [{"name": "remove-identity"}, {"name": "test-break-outputs"}], "verify": {}}
    with pytest.raises(VerificationError) as info:
        onnxopt.compile(relu_model(), recipe=recipe, verify=mode, profile=False)
    if mode == "each":
        assert "test-break-outputs" in str(info.value)
    else:
        assert "--verify each" in str(info.value)


def test_recipe_overrides():
    recipe = load_target("ort-fp32")
    changed = apply_overrides(recipe, ["constant-folding.max_folded_bytes=1024", "verify.rtol=0.001"])
    assert [p for p in changed["passes"] if p["name"] == "constant-folding"][0]["max_folded_bytes"] == 1024
    assert changed["verify"]["rtol"] == 0.001
    assert "max_folded_bytes" not in [p for p in recipe["passes"] if p["name"] == "constant-folding"][0]
    with pytest.raises(ConfigError, match="not in this recipe"):
        apply_overrides(recipe, ["no-such-pass.x=1"])


def test_reserved_and_unknown_targets():
    from onnxopt.errors import TargetNotAvailableError
    from onnxopt.recipes import ALL_TARGETS, available_targets

    for name in ("ort-fp16", "trt-fp32", "trt-fp16"):
        assert load_target(name)["name"] == name
    reserved = [t for t in ALL_TARGETS if t not in available_targets()]
    for name in reserved:
        with pytest.raises(TargetNotAvailableError, match="not available yet"):
            load_target(name)
    with pytest.raises(ConfigError, match="unknown target"):
        load_target("tpu-int2")


def test_recipes_share_passes_through_includes(tmp_path):
    from onnxopt.recipes import load_recipe_file

    fp32, trt = load_target("ort-fp32"), load_target("trt-fp32")
    assert fp32["passes"] == trt["passes"] and len(fp32["passes"]) > 5
    assert [p["name"] for p in load_target("ort-fp16")["passes"]] == [p["name"] for p in fp32["passes"]] + ["convert-float16"]
    recipe = tmp_path / "mine.toml"
    recipe.write_text('[[passes]]\ninclude = "exact-fusion"\n\n[[passes]]\nname = "dedup-initializers"\n', encoding="utf-8")
    mine = load_recipe_file(recipe)
    assert mine["passes"][:-1] == fp32["passes"] and mine["passes"][-1] == {"name": "dedup-initializers"}
    mine["passes"][0]["symbolic"] = True
    assert load_target("ort-fp32")["passes"][0]["symbolic"] is False, "an include must be a copy"
    recipe.write_text('[[passes]]\ninclude = "no-such-thing"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="bad include .*exact-fusion"):
        load_recipe_file(recipe)


def test_report_counts_passes_skipped_for_lack_of_their_ops():
    result = onnxopt.compile(relu_model(), profile=False)
    skipped = [r.name for r in result.report.passes if r.stats.get("skipped")]
    assert skipped == ["shape-inference", "fusion"], "the symbolic round needs Shape/Size nodes"
    total = len(result.report.passes)
    assert f"passes: {total - 2} run, 2 skipped, " in result.report.summary()
