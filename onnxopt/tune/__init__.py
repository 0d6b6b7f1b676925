"""`onnxopt.tune`: the fastest model within an accuracy budget, searched with Optuna, run locally or on Ray.

    result = onnxopt.tune("model.onnx", calibration="calib/", data="tune.npz", labels="labels.npy",
                          max_drop=1.0, time_budget=900)
    result.model, result.report, result.pareto, result.trials

Each trial compiles one recipe of the search space (space.py) through `onnxopt.compile`, judges its
accuracy on the tuning data and measures its speedup with paired runs where it ran (trial.py). The
study (study.py) keeps the trials in Optuna storage; the executor (executors.py) runs them. At the
end the few fastest feasible trials are compiled once more, their accuracy checked again and their
speedup re-measured with more pairs; the fastest that still meets the budget is written (final.py).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.errors import CalibrationError, ConfigError
from onnxopt.tune.result import TuneResult
from onnxopt.tune.trial import Budget, run_trial

__all__ = ["Budget", "TuneResult", "tune"]


def tune(
    model: str | os.PathLike,
    *,
    calibration: str | os.PathLike,
    data: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    metric: Callable | None = None,
    max_drop: float | None = None,
    min_fidelity: float | None = None,
    max_size_mb: float | None = None,
    drop_sigmas: float = 1.0,
    targets: tuple[str, ...] | list[str] = ("ort-int8", "ort-fp32"),
    trials: int = 40,
    time_budget: float | None = None,
    workers: int = 1,
    ray: str | None = None,
    storage: str | None = None,
    study_name: str = "onnxopt-tune",
    seed: int = 0,
    profile_iters: int = 50,
    final_candidates: int = 3,
    final_iters: int | None = None,
    subset: int = 200,
    threads: int = 0,
    output: str | os.PathLike | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    trial_function: Callable = run_trial,
) -> TuneResult:
    """Search recipes for the fastest model that meets the budget; see the module docstring.

    Exactly one of `max_drop` (labeled top-1 points with `labels`, else top-1 disagreement) and
    `min_fidelity` (cosine to the original) is the accuracy objective; `max_size_mb` adds a
    constraint. A drop must meet `max_drop` `drop_sigmas` standard errors above its estimate.
    `ray` is the address of an existing Ray cluster (checked before any work); `storage` a journal file or an RDB URL that makes the study resumable. `trials` counts every
    trial of the stored study, earlier runs included. `trial_function` replaces the worker's
    trial (tests use it to simulate a dying worker). `final_candidates` fastest feasible trials are
    re-checked at the end, each timed with `final_iters` pairs (default 4 x `profile_iters`).

    `metric(outputs, labels)` replaces the accuracy measure, as in `onnxopt.evaluate`: it gets every
    output of a model over the tuning data (stacked on axis 0) and the labels, and returns a number,
    higher is better (or a dict: its first value counts). `max_drop` then bounds the original's
    value minus the optimized model's, in the metric's units. It runs in the trial processes, so it
    must pickle: a module-level function, not a lambda.
    """
    from onnxopt.ir import load_model, save_model
    from onnxopt.tune import executors
    from onnxopt.tune.final import final_selection
    from onnxopt.tune.result import trial_record
    from onnxopt.tune.space import check_targets, knobs, recipe_for
    from onnxopt.tune.study import (
        SearchSettings,
        open_study,
        progress_bar,
        search,
        started_trials,
        top_feasible,
    )

    say = log or (lambda message: None)
    started = time.perf_counter()
    if (max_drop is None) == (min_fidelity is None):
        raise ConfigError("tune needs exactly one accuracy budget: --max-drop PTS or --min-fidelity X")
    if trials < 1 or workers < 1 or final_candidates < 1:
        raise ConfigError("--trials, --workers and final_candidates must be at least 1")
    if final_iters is not None and final_iters < 2:
        raise ConfigError("final_iters must be at least 2 (timed pairs)")
    if time_budget is not None and time_budget <= 0:
        raise ConfigError("--time-budget must be positive (seconds)")
    if output is not None and Path(output).suffix.lower() != ".onnx":
        raise ConfigError(f"output {output} must end in .onnx")
    if output is not None and Path(output).resolve() == Path(model).resolve():
        raise ConfigError(f"output {output} is the input model; choose another -o")
    targets = check_targets(tuple(targets))
    if metric is not None:
        _check_metric(metric, max_drop)
    if ray is not None:
        executors._probe(ray)  # a dead address fails here, before any work
    if drop_sigmas < 0:
        raise ConfigError(f"--drop-sigmas must be 0 or more standard errors, got {drop_sigmas:g}")
    budget = Budget(max_drop=max_drop, min_fidelity=min_fidelity, max_size_mb=max_size_mb, drop_sigmas=drop_sigmas)

    original = load_model(model)
    with tempfile.TemporaryDirectory(prefix="onnxopt-tune-") as work:
        say("loading the model, calibration and tuning data once for every trial")
        files = _prepare(original, Path(work), calibration, data, labels, ray is not None)
        overlap = _overlap_note(original, files)
        if overlap:
            say(f"warning: {overlap}")
        settings = SearchSettings(
            targets=targets, budget=budget, files=files, trials=trials, time_budget=time_budget, seed=seed,
            profile_iters=profile_iters, subset=subset, threads=threads, study_name=study_name, metric=metric,
            context={"model": hashlib.sha256(original.SerializeToString()).hexdigest()[:16], "targets": list(targets),
                     **({"metric": getattr(metric, "__name__", "metric")} if metric is not None else {}),
                     "budget": {"max_drop": max_drop, "min_fidelity": min_fidelity, "max_size_mb": max_size_mb, "drop_sigmas": drop_sigmas}},
        )
        study = open_study(settings, storage)
        if ray is not None:
            executor = executors.RayExecutor(ray, files, workers if workers > 1 else None, trial_function)
        else:
            executor = executors.LocalExecutor(workers, trial_function)
        say(f"searching with {executor.slots} {executor.name} worker(s), up to {trials} trials" + (f" or {time_budget:g} s" if time_budget else ""))
        with progress_bar(trials, time_budget) if show_progress else _no_bar() as on_trial:
            search(study, settings, executor, on_trial)

        command = ["onnxopt", "compile", str(model), "--calib", str(calibration)]
        records = [trial_record(t, targets, command) for t in started_trials(study)]
        result = TuneResult(
            executor=executor.name, objective=settings.objective, budget=settings.context["budget"], trials=records,
            pareto=sorted(t.number for t in study.best_trials), source=str(model),
        )
        result.notes += [overlap] if overlap else []
        by_number = {r["number"]: r for r in records}
        candidates = top_feasible(study, final_candidates)
        if not candidates:
            result.closest = _closest(records)
        else:
            chosen, again, result.final_selection = final_selection(
                original, [(by_number[t.number], recipe_for(t.params, knobs(targets))) for t in candidates], files, settings,
                iters=final_iters or 4 * profile_iters, log=say,
            )
            result.notes += [f"trial #{e['number']} {e['reason']}" for e in result.final_selection if not e["feasible"]]
            if chosen is None:
                result.closest = by_number[candidates[0].number]
                result.notes.append("no re-checked candidate met the budget; no model written")
            else:
                result.best, result.model, result.report = chosen, again.model, again.report
                if output is not None:
                    save_model(result.model, output)
                    result.output = str(output)
    result.seconds = time.perf_counter() - started
    return result


def _check_metric(metric: Callable, max_drop: float | None) -> None:
    import pickle

    if max_drop is None:
        raise ConfigError("a user metric needs --max-drop (the most its value may fall), not --min-fidelity")
    try:
        pickle.dumps(metric)
    except Exception as exc:  # noqa: BLE001 - PicklingError, AttributeError for lambdas and closures
        raise ConfigError(f"metric {getattr(metric, '__name__', metric)!r} cannot be sent to the trial processes ({type(exc).__name__}); "
                          "pass a module-level function, not a lambda or a closure") from None


def _no_bar():
    from contextlib import nullcontext

    return nullcontext(lambda study, finished: None)


def _stack(source: Any, model, path: Path) -> Path:
    """All samples of a source in one stacked .npz (inputs on axis 0): read once, cheap to ship."""
    from onnxopt.calibration import open_calibration

    samples = list(open_calibration(source, model))
    try:
        arrays = {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}
    except ValueError as exc:
        raise CalibrationError(f"{source}: tune needs samples of one shape per input to share them between trials ({exc})") from None
    np.savez(path, **arrays)
    return path


def _prepare(original, work: Path, calibration, data, labels, remote: bool) -> dict[str, str]:
    from onnxopt.evaluation import load_labels
    from onnxopt.ir import save_model

    files = {"model": str(work / "model.onnx"), "calib": str(_stack(calibration, original, work / "calib.npz")),
             "data": str(_stack(data, original, work / "data.npz"))}
    save_model(original, files["model"])
    if labels is not None:
        np.save(work / "labels.npy", load_labels(labels))
        files["labels"] = str(work / "labels.npy")
    return files


def _overlap_note(original, files: dict[str, str]) -> str | None:
    """A warning when tuning samples are also calibration samples: trials fitted on them score too well."""
    from onnxopt.calibration import fingerprint, fingerprints, open_calibration
    from onnxopt.evaluation import overlap_warning

    fitted = fingerprints(open_calibration(files["calib"], original))
    digests = [fingerprint(feeds) for feeds in open_calibration(files["data"], original)]
    overlap = sum(d in fitted for d in digests)
    return overlap_warning(overlap, len(digests), "tuning") if overlap else None


def _closest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial nearest to meeting the budget: completed ones by total violation, else early-rejected ones."""
    complete = [r for r in records if r["state"] == "complete" and r["violation"] is not None]
    if complete:
        return min(complete, key=lambda r: (r["violation"], -(r["speedup"] or 0)))
    rejected = [r for r in records if r["state"] == "pruned" and r.get("drop_pts") is not None]
    return min(rejected, key=lambda r: r["drop_pts"], default=None)

