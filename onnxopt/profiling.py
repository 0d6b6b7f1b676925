"""Latency measurement that holds up on a noisy machine.

Single-model stats are percentiles over timed runs after a warm-up. Comparisons alternate the two
models run by run (A B B A ...) and take the median of the per-pair ratios with a bootstrap
confidence interval, so drift and neighbours' load hit both sides alike.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from onnxopt import progress


@dataclass
class LatencyStats:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    throughput: float  # samples per second at the measured batch size
    iterations: int
    batch: int = 1

    @classmethod
    def from_samples(cls, seconds: list[float] | np.ndarray, batch: int = 1) -> "LatencyStats":
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        mean = float(ms.mean())
        return cls(
            mean_ms=mean,
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            min_ms=float(ms.min()),
            throughput=batch * 1e3 / mean if mean > 0 else float("inf"),
            iterations=len(ms),
            batch=batch,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatencyComparison:
    """`speedup` > 1 means the candidate is faster: median over pairs of baseline_time / candidate_time."""

    baseline: LatencyStats
    candidate: LatencyStats
    speedup: float
    ci_low: float
    ci_high: float
    pairs: int
    baseline_seconds: tuple[float, ...] = ()  # raw paired timings, so callers can pool rounds
    candidate_seconds: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.to_dict(),
            "candidate": self.candidate.to_dict(),
            "speedup": self.speedup,
            "ci95": [self.ci_low, self.ci_high],
            "pairs": self.pairs,
        }


def _time_once(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(run: Callable[[], Any], *, warmup: int = 5, iters: int = 50, batch: int = 1) -> LatencyStats:
    samples = []
    with progress.task("profiling", total=warmup + max(iters, 1)) as advance:
        for _ in range(warmup):
            run()
            advance()
        for _ in range(max(iters, 1)):
            samples.append(_time_once(run))
            advance()
    return LatencyStats.from_samples(samples, batch)


def bootstrap_median_ci(values: np.ndarray, *, rounds: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(rounds, len(values)), replace=True)
    medians = np.median(samples, axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def compare(
    run_baseline: Callable[[], Any],
    run_candidate: Callable[[], Any],
    *,
    warmup: int = 5,
    iters: int = 50,
    batch: int = 1,
    seed: int = 0,
) -> LatencyComparison:
    """Interleaved paired timing; the order inside each pair alternates to cancel warm-cache bias."""
    base, cand = [], []
    with progress.task("profiling original vs optimized", total=warmup + max(iters, 2)) as advance:
        for _ in range(warmup):
            run_baseline()
            run_candidate()
            advance()
        for i in range(max(iters, 2)):
            if i % 2 == 0:
                base.append(_time_once(run_baseline))
                cand.append(_time_once(run_candidate))
            else:
                cand.append(_time_once(run_candidate))
                base.append(_time_once(run_baseline))
            advance()
    ratios = np.asarray(base) / np.maximum(np.asarray(cand), 1e-12)
    low, high = bootstrap_median_ci(ratios, seed=seed)
    return LatencyComparison(
        baseline=LatencyStats.from_samples(base, batch),
        candidate=LatencyStats.from_samples(cand, batch),
        speedup=float(np.median(ratios)),
        ci_low=low,
        ci_high=high,
        pairs=len(ratios),
        baseline_seconds=tuple(base),
        candidate_seconds=tuple(cand),
    )


def ort_profile_breakdown(profile_path: str, runs: int) -> list[dict[str, Any]]:
    """Per-operator-type time from an onnxruntime profile JSON: ms per run, share, node count.

    Each node's time is the median over the profiled runs, so the cold first run (which the
    profile always holds: profiling starts with the session) and a neighbour's burst do not
    inflate one op type. `runs` is kept for callers; the medians need no count.
    """
    with open(profile_path, encoding="utf-8") as handle:
        events = json.load(handle)
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        durations[(op, event["name"][: -len("_kernel_time")])].append(float(event.get("dur", 0)))
    total_us: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    for (op, _node), values in durations.items():
        total_us[op] += float(np.median(values))
        nodes[op] += 1
    grand = sum(total_us.values()) or 1.0
    rows = [{"op_type": op, "ms_per_run": us / 1e3, "share": us / grand, "nodes": nodes[op]} for op, us in total_us.items()]
    return sorted(rows, key=lambda r: -r["ms_per_run"])
