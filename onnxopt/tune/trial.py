"""One trial of the search, run on a worker: compile the recipe, judge accuracy, measure latency.

Accuracy is checked first on a subset of the tuning data: a trial that already misses the budget
there by more than the subset's noise is rejected (Optuna's PRUNED) before the full evaluation
and the latency runs, so a bad recipe costs a compile and a few hundred inferences. Latency is
measured, never estimated: interleaved paired runs of the original and the candidate on this
worker, so speedups are comparable across heterogeneous machines.

The compile and the accuracy runs use one thread (ONNX Runtime sessions and BLAS): on a busy
machine the spinning threads of a compile's many small sessions cost several times the work
(measured: a pruned int8 trial of the Fashion CNN took 34-83 s with default threads, 7-13 s with
one, at load 3-8 on 2 cores). Only the latency comparison runs with the worker's `threads`.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

COMPLETE, PRUNED = "complete", "pruned"


@dataclass
class Budget:
    """Hard constraints: accuracy drop in points (labeled, else top-1 disagreement), fidelity floor, size cap."""

    max_drop: float | None = None
    min_fidelity: float | None = None
    max_size_mb: float | None = None
    drop_sigmas: float = 1.0  # the drop must fit the budget this many standard errors above its estimate

    def violations(self, drop: float | None, fidelity: float | None, size_mb: float | None, drop_stderr: float = 0.0) -> dict[str, float]:
        """One number per constraint, <= 0 when met (Optuna's convention).

        The drop is charged `drop_sigmas` standard errors of its estimate: the fastest of many
        trials at the edge of the budget is also the luckiest on the tuning data (measured on the
        Fashion ResNet: -0.90 pts on the 2,000 tuning images, -1.48 on 10,000 test images)."""
        out = {}
        if self.max_drop is not None:
            out["max_drop"] = math.inf if drop is None else drop + self.drop_sigmas * drop_stderr - self.max_drop
        if self.min_fidelity is not None:
            out["min_fidelity"] = math.inf if fidelity is None else self.min_fidelity - fidelity
        if self.max_size_mb is not None:
            out["max_size_mb"] = math.inf if size_mb is None else size_mb - self.max_size_mb
        return out


@dataclass
class TrialJob:
    """Everything a worker needs; files are local paths (the Ray executor materializes them first)."""

    number: int
    params: dict[str, Any]
    targets: tuple[str, ...]
    files: dict[str, str]  # model, calib, data, optional labels
    budget: Budget
    seed: int = 0
    profile_iters: int = 50
    subset: int = 200
    threads: int = 0
    metric: Callable | None = None  # the user's metric(outputs, labels); must pickle (a module-level function)
    where: str = field(default_factory=lambda: "local")


def accuracy_of(evaluation) -> tuple[float | None, float, dict[str, Any] | None]:
    """(drop, fidelity, labeled accuracy) of an EvaluationResult.

    With a user metric the drop is its original value minus its optimized value (the metric's
    own units, higher is better: its first value when it returns a dict); with labels the top-1
    drop in points; otherwise the share of samples whose top-1 changed, an upper bound on the
    accuracy lost (as `gate` does).
    """
    if evaluation.metric is not None:
        first = next(iter(evaluation.metric["values"].values()))
        return float(first["original"] - first["optimized"]), float(evaluation.fidelity), evaluation.accuracy
    if evaluation.accuracy is not None:
        return float(evaluation.accuracy["drop_top1_pts"]), float(evaluation.fidelity), evaluation.accuracy
    agreement = evaluation.top1_agreement
    return (None if agreement is None else (1.0 - agreement) * 100.0), float(evaluation.fidelity), None


def drop_stderr(evaluation) -> float:
    """Standard error of the top-1 drop in points, 0 with a user metric (its noise is unknown).

    The drop on n samples is a mean of per-sample differences in {-1, 0, 1}, non-zero only where
    the prediction changed, so its standard error is at most sqrt(changed / n)."""
    if evaluation.metric is not None or not evaluation.samples:
        return 0.0
    agreement = evaluation.top1_agreement if evaluation.top1_agreement is not None else 0.0
    return math.sqrt(max(1.0 - agreement, 1.0 / evaluation.samples) / evaluation.samples) * 100.0


@contextmanager
def one_thread() -> Iterator[None]:
    """ONNX Runtime sessions and BLAS on one thread meanwhile (see the module docstring)."""
    from threadpoolctl import threadpool_limits

    from onnxopt.runtime import default_threads

    with default_threads(1), threadpool_limits(1):
        yield


def clearly_over_budget(evaluation, budget: Budget) -> str | None:
    """Why a subset result already fails the budget beyond its noise, else None: even two
    standard errors (drop_stderr) below the measured drop is over the budget."""
    drop, fidelity, _ = accuracy_of(evaluation)
    if budget.max_drop is not None and drop is not None and evaluation.metric is None:  # a user metric has no known noise
        stderr = drop_stderr(evaluation)
        if drop - 2 * stderr > budget.max_drop:
            return f"drop {drop:.2f} pts on {evaluation.samples} samples (± {2 * stderr:.2f}) is over the budget {budget.max_drop:g}"
    if budget.min_fidelity is not None and fidelity < budget.min_fidelity - (1.0 - budget.min_fidelity):
        return f"fidelity {fidelity:.5f} on {evaluation.samples} samples is far below the floor {budget.min_fidelity:g}"
    return None


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Compile, early-reject, evaluate, time. Returns a plain dict (it crosses process boundaries)."""
    from onnxopt import progress
    from onnxopt.api import compile as run_compile
    from onnxopt.backends import get_backend
    from onnxopt.calibration import open_calibration
    from onnxopt.evaluation import evaluate
    from onnxopt.ir import load_model
    from onnxopt.tune.space import knobs, recipe_for

    progress.set_quiet(True)
    started = time.perf_counter()
    recipe = recipe_for(job.params, knobs(job.targets))
    files = job.files
    labels = files.get("labels")
    outcome: dict[str, Any] = {"number": job.number, "host": socket.gethostname(), "worker": f"{job.where} pid {os.getpid()}"}

    original = load_model(files["model"])
    with one_thread():
        compiled = run_compile(
            original, target=recipe.target, calibration=files["calib"], extra_passes=recipe.extra_passes(),
            overrides=recipe.overrides, profile=False, save=False, seed=job.seed,
        )
    candidate = compiled.model
    size_mb = compiled.report.after["size_bytes"] / 1e6
    outcome.update(size_mb=size_mb, macs=compiled.report.after.get("macs"), macs_before=compiled.report.before.get("macs"),
                   compile_s=round(time.perf_counter() - started, 2))

    def finish(state: str, **extra) -> dict[str, Any]:
        outcome.update(state=state, seconds=time.perf_counter() - started, **extra)
        return outcome

    if job.budget.max_size_mb is not None and size_mb > job.budget.max_size_mb:
        return finish(PRUNED, reason=f"size {size_mb:.2f} MB is over --max-size-mb {job.budget.max_size_mb:g}")
    with one_thread():
        if job.subset and job.metric is None and len(open_calibration(files["data"], original)) > 2 * job.subset:
            quick = evaluate(original, candidate, files["data"], _head(labels, job.subset), limit=job.subset)
            why = clearly_over_budget(quick, job.budget)
            if why:
                drop, fidelity, _ = accuracy_of(quick)
                return finish(PRUNED, reason=why, drop_pts=drop, fidelity=fidelity, samples=quick.samples)
        evaluation = evaluate(original, candidate, files["data"], labels, metric=job.metric)
    drop, fidelity, accuracy = accuracy_of(evaluation)
    if evaluation.metric is not None:
        outcome["metric"] = evaluation.metric
    feeds = next(iter(open_calibration(files["data"], original, limit=1)))
    backend = get_backend("ort", threads=job.threads)
    comparison = backend.compare(original, candidate, feeds, warmup=max(job.profile_iters // 10, 2), iters=job.profile_iters)
    return finish(
        COMPLETE, drop_pts=drop, drop_stderr=drop_stderr(evaluation), fidelity=fidelity, accuracy=accuracy, samples=evaluation.samples,
        speedup=comparison.speedup, ci95=[comparison.ci_low, comparison.ci_high], pairs=comparison.pairs,
        latency_ms={"original": comparison.baseline.p50_ms, "candidate": comparison.candidate.p50_ms},
    )


def _head(labels: str | None, count: int):
    if labels is None:
        return None
    import numpy as np

    return np.load(labels, allow_pickle=False)[:count]
