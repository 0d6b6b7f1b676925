"""Differential fuzzing: every exact pass, and the whole ort-fp32 recipe, keep random valid models' outputs.

The passes come from the registry, so passes added later are fuzzed too. Each pass runs on the
graph as a recipe would hand it over (after shape inference); shape inference itself runs alone.
A valid model must come out valid and equal to float tolerance: any exception is a failure here.
"""

from __future__ import annotations

import pytest
from hypothesis import given

import onnxopt
from onnxopt.graphs import export_model, import_graph
from onnxopt.pipeline import PassContext, get_pass, registered_passes
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.generator import models, old_opset_models
from tests.fuzz.harness import assert_equivalent, reference_outputs

EXACT_PASSES = [name for name, cls in registered_passes().items() if cls.exact]


def apply_exact_pass(name, model):
    graph = import_graph(model)
    ctx = PassContext(teacher=model, seed=0)
    if name != "shape-inference":
        get_pass("shape-inference")().run(graph, ctx)
        ctx.invalidate()
    result = get_pass(name)().run(graph, ctx)
    return export_model(graph, model), result


def test_registry_has_exact_passes():
    assert {"shape-inference", "constant-folding", "remove-identity", "dead-code-elimination"} <= set(EXACT_PASSES)


@fuzz_settings(100)
@given(models())
def test_every_exact_pass_keeps_outputs(case):
    model, batched = case
    refs = reference_outputs(model, batched)
    for name in EXACT_PASSES:
        out, _ = apply_exact_pass(name, model)
        assert_equivalent(refs, out, f"pass {name}")


@fuzz_settings(60)
@given(models())
def test_ort_fp32_recipe_keeps_outputs(case):
    model, batched = case
    refs = reference_outputs(model, batched)
    before = model.SerializeToString()
    result = onnxopt.compile(model, target="ort-fp32", profile=False)
    assert model.SerializeToString() == before, "compile modified the caller's model"
    assert result.report.verification.get("ok") is True
    assert_equivalent(refs, result.model, "ort-fp32")
    assert len(result.model.graph.node) <= len(model.graph.node)


@fuzz_settings(10)
@given(old_opset_models())
def test_old_opset_models_are_upgraded_and_keep_outputs(case):
    """Below opset 7: upgraded on load (reported), then optimized; outputs equal the original's."""
    model, _ = case
    refs = reference_outputs(model, batched=False)
    result = onnxopt.compile(model, target="ort-fp32", profile=False)
    assert result.model.opset_import[0].version >= 7
    assert result.report.artifacts["opset_upgrade"]["from"] == 6
    assert_equivalent(refs, result.model, "ort-fp32 (upgraded)")


def test_harness_catches_a_pass_that_changes_outputs(monkeypatch):
    """The differential check can fail: a registered 'exact' pass that flips one weight's sign is caught."""
    import numpy as np
    import onnx_graphsurgeon as gs

    from onnxopt import pipeline
    from tests.robustness.models import rich_model

    class FlipWeight(pipeline.Pass):
        name = "test-flip-weight"
        exact = True

        def run(self, graph, ctx):
            weight = graph.tensors()["gamma"]
            assert isinstance(weight, gs.Constant)
            weight.values = -np.asarray(weight.values)
            return pipeline.PassResult(changed=True)

    monkeypatch.setitem(pipeline._REGISTRY, FlipWeight.name, FlipWeight)
    model = rich_model()
    refs = reference_outputs(model, batched=True)
    out, _ = apply_exact_pass(FlipWeight.name, model)
    with pytest.raises(AssertionError, match="differs by"):
        assert_equivalent(refs, out, "flip")
