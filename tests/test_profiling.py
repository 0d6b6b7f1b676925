"""Profiling statistics and paired comparison (no timing thresholds: those belong in benchmarks/)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxopt.profiling import LatencyStats, bootstrap_median_ci, compare, measure, ort_profile_breakdown


def test_stats_from_known_samples():
    stats = LatencyStats.from_samples([0.001, 0.002, 0.003, 0.004], batch=2)
    assert stats.mean_ms == pytest.approx(2.5)
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.throughput == pytest.approx(2 * 1000 / 2.5)
    assert stats.iterations == 4


def test_measure_counts_runs_and_warmup():
    calls = []
    stats = measure(lambda: calls.append(1), warmup=3, iters=7)
    assert len(calls) == 10 and stats.iterations == 7


def test_compare_interleaves_and_alternates_order():
    order = []
    result = compare(lambda: order.append("a"), lambda: order.append("b"), warmup=0, iters=4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.pairs == 4 and result.ci_low <= result.speedup <= result.ci_high


def test_compare_ratio_from_a_fake_clock(monkeypatch):
    """Baseline takes 3 units, candidate 1, with one noisy pair: the median ignores the outlier."""
    durations = iter([3, 1, 1, 3, 3, 1, 100, 3, 3, 1])
    monkeypatch.setattr("onnxopt.profiling._time_once", lambda run: next(durations))
    result = compare(lambda: None, lambda: None, warmup=0, iters=5)
    assert result.speedup == pytest.approx(3.0)
    assert result.baseline.p50_ms == pytest.approx(3000.0)


def test_bootstrap_ci_brackets_the_median():
    values = np.random.default_rng(0).normal(1.5, 0.1, 200)
    low, high = bootstrap_median_ci(values)
    assert low < np.median(values) < high and high - low < 0.1


def test_ort_profile_breakdown_takes_per_node_medians(tmp_path):
    """The cold first run (1000 us) must not inflate Conv: each node counts its median run."""
    def kernel(node, op, dur):
        return {"cat": "Node", "name": f"{node}_kernel_time", "dur": dur, "args": {"op_name": op}}

    events = [kernel("conv1", "Conv", d) for d in (1000, 300, 300)]
    events += [kernel("conv2", "Conv", 100) for _ in range(3)] + [kernel("relu", "Relu", 100) for _ in range(3)]
    events += [{"cat": "Node", "name": "relu_fence_before", "dur": 999, "args": {"op_name": "Relu"}}]
    events += [{"cat": "Session", "name": "model_run", "dur": 5000}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(events))
    rows = ort_profile_breakdown(str(path), runs=3)
    assert rows[0] == {"op_type": "Conv", "ms_per_run": pytest.approx(0.4), "share": pytest.approx(0.8), "nodes": 2}
    assert rows[1]["op_type"] == "Relu" and rows[1]["share"] == pytest.approx(0.2)
