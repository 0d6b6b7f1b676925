"""The final choice: the few fastest feasible trials compiled again and re-measured; the fastest that still meets the budget wins.

A trial's speedup inside the search comes from ~50 pairs on a busy machine, and the top trials are
often within noise of each other (measured: the chosen trial 2.62x in the search, 2.18x judged
afterwards). So the K fastest feasible trials by in-search speedup are each compiled again exactly as
their command says, their accuracy checked again on the whole tuning data, and their latency measured
again against the original with the paired, interleaved comparison and more pairs. The fastest by
that re-measurement among those still meeting every constraint is the chosen model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onnxopt.tune.trial import accuracy_of, drop_stderr, one_thread


@dataclass
class Recompiled:
    """One candidate compiled again with its full report, and how it stands against the budget."""

    model: Any  # onnx.ModelProto
    report: Any  # CompileReport
    drop_pts: float | None
    fidelity: float
    size_mb: float
    violations: dict[str, float]

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.violations.values())


def recompile(original, recipe, files: dict[str, str], settings) -> Recompiled:
    """The recipe compiled once more (as its command line does), its accuracy judged on all the tuning data."""
    from onnxopt.api import compile as run_compile
    from onnxopt.evaluation import EvaluationResult, evaluate

    with one_thread():  # as in the trials: compiles and accuracy runs on one thread (see trial.py)
        compiled = run_compile(
            original, target=recipe.target, calibration=files["calib"], extra_passes=recipe.extra_passes(),
            overrides=recipe.overrides, save=False, seed=settings.seed, profile=False, threads=settings.threads,
            evaluation_data=files["data"], labels=files.get("labels"),
        )
        ev = compiled.report.evaluation
        if settings.metric is not None:
            evaluation = evaluate(original, compiled.model, files["data"], files.get("labels"), metric=settings.metric)
        else:
            evaluation = EvaluationResult(samples=ev["samples"], outputs=ev["outputs"], accuracy=ev["accuracy"])
    drop, fidelity, _ = accuracy_of(evaluation)
    size_mb = compiled.report.after["size_bytes"] / 1e6
    violations = settings.budget.violations(drop, fidelity, size_mb, drop_stderr(evaluation))
    return Recompiled(compiled.model, compiled.report, drop, fidelity, size_mb, violations)


def remeasure(original, candidate, files: dict[str, str], settings, iters: int):
    """Paired, interleaved timing of the candidate against the original on a real tuning sample (one session per model)."""
    from onnxopt.backends import get_backend
    from onnxopt.calibration import open_calibration

    feeds = next(iter(open_calibration(files["data"], original, limit=1)))
    backend = get_backend("ort", threads=settings.threads)
    return backend.compare(original, candidate, feeds, warmup=max(iters // 10, 2), iters=iters)


def final_selection(
    original,
    candidates: list[tuple[dict[str, Any], Any]],
    files: dict[str, str],
    settings,
    *,
    iters: int,
    compile_again: Callable = recompile,
    measure: Callable = remeasure,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, Any] | None, Recompiled | None, list[dict[str, Any]]]:
    """Re-check each (trial record, recipe) candidate; return the chosen record, its recompiled model, and one entry per candidate.

    A candidate that misses the budget when compiled again is not timed and cannot win. Ties keep
    the earlier candidate (the faster one inside the search). `compile_again` and `measure` are
    parameters so tests can make the re-checks deterministic.
    """
    entries: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], Recompiled] | None = None
    for record, recipe in candidates:
        log(f"final selection: compiling trial #{record['number']} again and re-measuring it")
        again = compile_again(original, recipe, files, settings)
        entry = {"number": record["number"], "search_speedup": record.get("speedup"), "search_ci95": record.get("ci95"),
                 "drop_pts": again.drop_pts, "fidelity": again.fidelity, "size_mb": again.size_mb,
                 "feasible": again.feasible, "speedup": None, "ci95": None, "pairs": None, "chosen": False}
        if not again.feasible:
            missed = ", ".join(f"{name} by {value:g}" for name, value in again.violations.items() if value > 0)
            entry["reason"] = f"missed the budget when compiled again ({missed}); not timed"
        else:
            comparison = measure(original, again.model, files, settings, iters)
            entry.update(speedup=comparison.speedup, ci95=[comparison.ci_low, comparison.ci_high], pairs=comparison.pairs)
            again.report.latency = comparison.to_dict()  # the chosen model's report shows the final measurement
            if best is None or comparison.speedup > best[0]:
                best = (comparison.speedup, record, again)
        entries.append(entry)
    if best is None:
        return None, None, entries
    _, record, again = best
    next(e for e in entries if e["number"] == record["number"])["chosen"] = True
    return record, again, entries
