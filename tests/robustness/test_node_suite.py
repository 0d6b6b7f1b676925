"""ONNX's own node-test models through onnxopt (see node_suite.py for what counts as what).

In CI: a fixed share through the ort-fp32 recipe, and the models that once broke a pass through
every exact pass alone. `pytest -m slow tests/robustness/test_node_suite.py` runs all of them;
`python -m tests.robustness --details` prints the totals table.
"""

from __future__ import annotations

import pytest

from tests.robustness.node_suite import OUTCOMES, REGRESSIONS, case_names, ci_share, exact_passes, run_case, totals

NAMES = case_names()

# Refusals a user can act on, by model: the reason must contain the text.
# (sequence inputs whose items have no declared rank: `--input-shape name=...` gives it)
KNOWN_REFUSALS: dict[str, str] = {
    name: "has no declared rank; pass --input-shape"
    for name in ("test_identity_sequence", "test_sequence_insert_at_back", "test_sequence_insert_at_front")
}


def _check_recipe(record: dict) -> None:
    if record["ort"] != "ok":
        pytest.skip(f"onnxruntime cannot run it ({record['ort']}: {record['ort_why'][:120]})")
    outcome = record["results"]["ort-fp32"]
    if outcome.outcome == "refused" and record["name"] in KNOWN_REFUSALS:
        assert KNOWN_REFUSALS[record["name"]] in outcome.why
        return
    assert outcome.outcome == "unchanged", f"{outcome.outcome}: {outcome.why}"


def test_suite_has_the_node_models():
    assert len(NAMES) > 1000
    assert set(REGRESSIONS) <= set(NAMES)


@pytest.mark.parametrize("name", ci_share(NAMES))
def test_node_model_through_ort_fp32(name):
    _check_recipe(run_case(name, passes=False))


@pytest.mark.parametrize("name", REGRESSIONS)
def test_regression_model_through_every_exact_pass(name):
    record = run_case(name, passes=True)
    _check_recipe(record)
    assert set(exact_passes()) <= set(record["results"])
    broken = {target: f"{o.outcome}: {o.why[:200]}" for target, o in record["results"].items() if o.outcome != "unchanged"}
    assert not broken


@pytest.mark.slow
def test_every_node_model_onnxruntime_runs_comes_through():
    """The issue's bar: of the models ORT runs, >= 99% unchanged through ort-fp32, none changed or crashed."""
    records = [run_case(name, passes=False) for name in NAMES]
    recipe = totals(records)["ort-fp32"]
    runnable = sum(recipe.values())
    for record in records:
        outcome = record["results"].get("ort-fp32")
        if outcome is not None and outcome.outcome == "refused":
            assert KNOWN_REFUSALS.get(record["name"], "(not a known refusal)") in outcome.why, (record["name"], outcome.why)
    assert recipe["changed"] == 0 and recipe["crashed"] == 0, {o: recipe[o] for o in OUTCOMES}
    assert recipe["unchanged"] >= 0.99 * runnable, {o: recipe[o] for o in OUTCOMES}
