"""Every default-domain op onnxruntime runs passes through all exact passes with its meaning intact.

Ops a pass does not know must be left alone, not rejected: each single-op model compiles, keeps its
op, and gives the same outputs. The recipe holds every exact pass in the registry, so passes added
later are covered too.
"""

from __future__ import annotations

import numpy as np
import pytest

import onnxopt
from onnxopt.evaluation import output_difference, outputs_match
from onnxopt.inputs import input_specs, random_feeds
from onnxopt.pipeline import registered_passes
from onnxopt.runtime import run_model
from tests.robustness.op_table import OPS, RANDOM_OPS, REMOVABLE, build

EXACT_RECIPE = {
    "name": "all-exact",
    "backend": "ort",
    "passes": [{"name": "shape-inference"}] + [{"name": n} for n, cls in registered_passes().items() if cls.exact],
    "verify": {"mode": "end"},
}


def node_ops(model):
    return sorted({n.op_type for n in model.graph.node})


def test_table_covers_over_100_default_domain_ops():
    ops = {n.op_type for entry in OPS for n in build(entry).graph.node}
    assert len(ops) >= 150, len(ops)


@pytest.mark.parametrize("entry", OPS, ids=lambda e: e.name)
def test_op_survives_exact_pipeline(entry):
    model = build(entry)
    feeds = random_feeds(input_specs(model), seed=3)
    expected = run_model(model, feeds)
    result = onnxopt.compile(model, recipe=EXACT_RECIPE, profile=False)
    kept = set(node_ops(result.model))
    rewriters = [r.name for r in result.report.passes if r.changed and r.name not in ("shape-inference", "remove-identity")]
    if not rewriters:  # no pass claims to have rewritten it, so the op must still be there
        assert set(node_ops(model)) - REMOVABLE <= kept, f"{entry.name}: ops {node_ops(model)} became {sorted(kept)}"
    actual = run_model(result.model, feeds)
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype and actual[name].shape == expected[name].shape, name
    if entry.op in RANDOM_OPS:
        assert result.report.verification.get("skipped"), "verification must say it skipped random ops"
        return
    ok, why = outputs_match(output_difference(expected, actual), rtol=1e-4, atol=1e-5)  # the ort-fp32 tolerance
    assert ok, f"{entry.name}: {why}"
    assert not np.any([w.startswith("numeric verification skipped") for w in result.report.warnings])
