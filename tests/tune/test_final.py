"""The final selection: of the re-checked candidates, the fastest by its re-measurement that still meets
the budget wins; one that misses the budget when compiled again is skipped, not timed. The compile and
the timing are injected, so the choice is deterministic (no assertion ever rests on a real timing)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from onnxopt.profiling import LatencyComparison, LatencyStats
from onnxopt.tune.final import Recompiled, final_selection
from onnxopt.tune.trial import Budget


def _stats(ms: float) -> LatencyStats:
    return LatencyStats.from_samples([ms / 1e3] * 4)


def _comparison(speedup: float) -> LatencyComparison:
    return LatencyComparison(baseline=_stats(2.0), candidate=_stats(2.0 / speedup), speedup=speedup,
                             ci_low=speedup - 0.1, ci_high=speedup + 0.1, pairs=4)


def _select(drops: dict[int, float], remeasured: dict[int, float], in_search: dict[int, float]):
    settings = SimpleNamespace(budget=Budget(max_drop=1.0))
    timed: list[int] = []

    def compile_again(original, recipe, files, settings):
        return Recompiled(model=f"model-{recipe}", report=SimpleNamespace(latency=None), drop_pts=drops[recipe], fidelity=0.999,
                          size_mb=1.0, violations=settings.budget.violations(drops[recipe], 0.999, 1.0))

    def measure(original, candidate, files, settings, iters):
        number = int(candidate.split("-")[1])
        timed.append(number)
        assert iters == 200
        return _comparison(remeasured[number])

    candidates = [({"number": n, "speedup": s, "ci95": [s - 0.3, s + 0.3]}, n) for n, s in in_search.items()]
    chosen, again, entries = final_selection("original", candidates, {}, settings, iters=200, compile_again=compile_again, measure=measure)
    return chosen, again, entries, timed


def test_picks_the_fastest_re_measurement_not_the_fastest_in_search():
    chosen, again, entries, timed = _select(drops={4: 0.2, 7: 0.5, 2: 0.1}, remeasured={4: 2.18, 7: 2.41, 2: 2.30},
                                            in_search={4: 2.62, 7: 2.55, 2: 2.50})
    assert chosen["number"] == 7 and again.model == "model-7"
    assert again.report.latency["speedup"] == 2.41  # the written model's report shows the final measurement
    assert [e["number"] for e in entries] == [4, 7, 2] and [e["chosen"] for e in entries] == [False, True, False]
    assert [e["speedup"] for e in entries] == [2.18, 2.41, 2.30]
    assert entries[0]["search_speedup"] == 2.62 and entries[1]["ci95"] == pytest.approx([2.31, 2.51]) and entries[1]["pairs"] == 4
    assert timed == [4, 7, 2]


def test_a_candidate_that_misses_the_budget_again_is_skipped():
    chosen, again, entries, timed = _select(drops={4: 0.2, 7: 1.4, 2: 0.1}, remeasured={4: 2.18, 7: 9.0, 2: 2.30},
                                            in_search={4: 2.62, 7: 2.55, 2: 2.50})
    assert chosen["number"] == 2 and again.model == "model-2"
    assert 7 not in timed  # not timed: it cannot win
    missed = entries[1]
    assert missed["number"] == 7 and not missed["feasible"] and not missed["chosen"] and missed["speedup"] is None
    assert "max_drop" in missed["reason"]


def test_no_candidate_meets_the_budget_again():
    chosen, again, entries, timed = _select(drops={4: 3.0, 7: 1.5}, remeasured={}, in_search={4: 2.62, 7: 2.55})
    assert chosen is None and again is None and timed == []
    assert [e["feasible"] for e in entries] == [False, False]
