"""Instruments around passes: the checker names a pass that leaves an invalid model, per-pass
verification names an exact pass that changes the outputs and follows a lossy pass's drift."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from onnxopt.errors import PassError, VerificationError
from onnxopt.graphs import import_graph
from onnxopt.instruments import CheckerInstrument, Verifier, VerifyEachInstrument
from onnxopt.pipeline import Pass, PassContext, PassManager, PassResult
from tests.conftest import init, make_model, tensor

WEIGHT = np.array([[-1.0, 0.5, 0.2], [-1.0, -0.5, 0.4], [-1.0, 0.5, 0.6], [-1.0, -0.5, 0.8]], np.float32)


def _model():
    """MatMul -> Relu whose first output column is negative for inputs of either sign."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return make_model(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 3])], [init("w", WEIGHT)])


class ReluToIdentity(Pass):
    """Wrong on purpose: drops the Relu, so negative outputs change."""

    name = "relu-to-identity"

    def run(self, graph, ctx):
        for node in graph.nodes:
            if node.op == "Relu":
                node.op = "Identity"
        return PassResult(changed=True)


class ScaleWeights(ReluToIdentity):
    """A lossy pass: scales every constant by 1.01 (1% relative drift)."""

    name = "scale-weights"
    exact = False

    def run(self, graph, ctx):
        for constant in graph.tensors().values():
            if isinstance(constant, gs.Constant):
                constant.values = constant.values * np.float32(1.01)
        return PassResult(changed=True)


class DropWeight(ReluToIdentity):
    """Leaves an invalid model: the MatMul loses its second input."""

    name = "drop-weight"

    def run(self, graph, ctx):
        matmul = next(n for n in graph.nodes if n.op == "MatMul")
        matmul.inputs.pop()
        return PassResult(changed=True)


class Untouched(ReluToIdentity):
    name = "untouched"

    def run(self, graph, ctx):
        return PassResult(changed=False)


def _run(passes, model=None):
    model = model or _model()
    ctx = PassContext()
    verifier = Verifier(model, ctx)
    manager = PassManager(passes, [CheckerInstrument(model), VerifyEachInstrument(verifier, model)])
    return manager.run(import_graph(model), ctx), verifier, ctx


def test_exact_pass_that_changes_outputs_is_named():
    with pytest.raises(VerificationError, match="pass relu-to-identity changed the model's outputs"):
        _run([ReluToIdentity()])


def test_checker_names_the_pass_that_left_an_invalid_model():
    with pytest.raises(PassError, match="pass drop-weight left an invalid model"):
        _run([DropWeight()])


def test_lossy_pass_drift_is_recorded_and_becomes_the_reference():
    records, verifier, _ = _run([ScaleWeights(), Untouched()])
    scaled, untouched = records
    assert scaled.checks["checker"] == "ok"
    assert scaled.checks["max_rel_error"] == pytest.approx(0.01, rel=0.05)
    assert untouched.checks == {}  # nothing changed: neither the checker nor verification ran
    expected = np.maximum(verifier.feeds["x"] @ (WEIGHT * np.float32(1.01)), 0)
    np.testing.assert_allclose(verifier.reference["y"], expected, rtol=1e-5, atol=1e-6)


def test_verification_skipped_for_random_ops():
    nodes = [helper.make_node("RandomUniformLike", ["x"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])])
    ctx = PassContext()
    verifier = Verifier(model, ctx)
    assert verifier.skipped == "the model has random ops (RandomUniformLike)"
    graph = import_graph(model)
    (record,) = PassManager([ScaleWeights()], [VerifyEachInstrument(verifier, model)]).run(graph, ctx)
    assert record.changed and "max_rel_error" not in record.checks
