"""The search: an Optuna multi-objective study over the space, fed by an executor, kept in storage.

Objectives are the measured speedup (maximized) and the accuracy drop in points (minimized) or the
fidelity (maximized); the budget is a set of hard constraints the sampler (TPE with
`constraints_func`) steers away from. Trials are asked and told (Optuna's ask-and-tell), so any
executor can run them. The study lives in Optuna storage (a journal file or an RDB URL): rerunning
the same command resumes it; trials a killed run left RUNNING are recorded as failed first.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from onnxopt.errors import ConfigError
from onnxopt.tune.space import default_params, knobs, suggest
from onnxopt.tune.trial import COMPLETE, PRUNED, Budget, TrialJob

OUTCOME = "outcome"


@dataclass
class SearchSettings:
    targets: tuple[str, ...]
    budget: Budget
    files: dict[str, str]
    trials: int = 40
    time_budget: float | None = None
    seed: int = 0
    profile_iters: int = 50
    subset: int = 200
    threads: int = 0
    study_name: str = "onnxopt-tune"
    metric: Callable | None = None  # the user's accuracy measure (see onnxopt.tune)
    context: dict[str, Any] = field(default_factory=dict)  # what the stored study must match to be resumed

    @property
    def objective(self) -> str:
        return "drop" if self.budget.max_drop is not None else "fidelity"

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize" if self.objective == "drop" else "maximize"]


def open_storage(storage: str | None):
    """None: in memory; a URL with '://': an RDB (sqlite:///tune.db, postgresql://...); else a journal file."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if "://" in storage:
        try:
            return optuna.storages.RDBStorage(storage)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors for a bad URL or server
            raise ConfigError(f"--storage {storage}: cannot open this database ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage)
    if not path.parent.resolve().is_dir():
        raise ConfigError(f"--storage {storage}: folder {path.parent} does not exist")
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_study(settings: SearchSettings, storage: str | None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=settings.seed, multivariate=True, group=True,
            n_startup_trials=min(8, max(settings.trials // 3, 2)),
        )
    study = optuna.create_study(
        storage=open_storage(storage), study_name=settings.study_name, directions=settings.directions,
        sampler=sampler, load_if_exists=True,
    )
    stored = study.user_attrs.get("context")
    wanted = {"objective": settings.objective, **settings.context}
    if stored is None:
        study.set_user_attr("context", wanted)
        for params in default_params(settings.targets, knobs(settings.targets)):
            study.enqueue_trial(params, skip_if_exists=True)
    elif stored != wanted:
        differs = ", ".join(sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k)))
        raise ConfigError(f"--storage already holds study {settings.study_name!r} for another search ({differs} differ); use a new --storage or --study-name")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # only one tune process drives a study: a RUNNING trial is left over from a killed run
        study.tell(trial.number, state=TrialState.FAIL)
    return study


def record(study: optuna.Study, trial: optuna.Trial, outcome: dict[str, Any], settings: SearchSettings) -> None:
    """Tell the study how a trial ended; the whole outcome stays in its user attributes."""
    state = outcome.get("state")
    trial.set_user_attr(OUTCOME, _plain(outcome))
    if state == COMPLETE:
        accuracy = outcome.get("drop_pts") if settings.objective == "drop" else outcome.get("fidelity")
        if accuracy is None:
            trial.set_user_attr(OUTCOME, {**_plain(outcome), "state": "failed", "reason": "no accuracy: --max-drop needs --labels or a classifier output"})
            study.tell(trial, state=TrialState.FAIL)
            return
        for name, value in settings.budget.violations(outcome.get("drop_pts"), outcome.get("fidelity"), outcome.get("size_mb"),
                                                         outcome.get("drop_stderr") or 0.0).items():
            trial.set_constraint(name, value if math.isfinite(value) else 1e9)
        study.tell(trial, [float(outcome["speedup"]), float(accuracy)])
    elif state == PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _plain(value: Any) -> Any:
    """JSON-safe (the journal stores user attributes as JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(v <= 0 for v in trial.constraints.values())


def top_feasible(study: optuna.Study, count: int) -> list[optuna.trial.FrozenTrial]:
    """The `count` fastest feasible trials by their in-search speedup, fastest first."""
    found = [t for t in study.get_trials(deepcopy=False) if feasible(t)]
    return sorted(found, key=lambda t: -t.values[0])[:count]


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    return next(iter(top_feasible(study, 1)), None)


def search(
    study: optuna.Study,
    settings: SearchSettings,
    executor,
    on_trial: Callable[[optuna.Study, int], None] = lambda study, finished: None,
) -> None:
    """Ask, run, tell until `settings.trials` trials exist in the study or the time budget is spent.

    On Ctrl-C the trials still running are stopped and recorded as failed, so the storage is
    consistent and a rerun resumes.
    """
    table = knobs(settings.targets)
    deadline = time.monotonic() + settings.time_budget if settings.time_budget else math.inf
    asked: dict[int, optuna.Trial] = {}
    finished = 0
    try:
        while True:
            while executor.running() < executor.slots and len(started_trials(study)) < settings.trials and time.monotonic() < deadline:
                trial = study.ask()
                params = suggest(trial, table)
                twin = _same_params(study, params, trial.number)
                if twin is not None:  # the sampler proposed a recipe already measured: say so, spend nothing
                    trial.set_user_attr(OUTCOME, {"state": PRUNED, "reason": f"same recipe as trial #{twin}"})
                    study.tell(trial, state=TrialState.PRUNED)
                    continue
                asked[trial.number] = trial
                executor.submit(TrialJob(
                    number=trial.number, params=params, targets=settings.targets, files=settings.files,
                    budget=settings.budget, seed=settings.seed, profile_iters=settings.profile_iters,
                    subset=settings.subset, threads=settings.threads, metric=settings.metric,
                ))
            if executor.running() == 0:
                return
            for job, outcome in executor.wait():
                record(study, asked.pop(job.number), outcome, settings)
                finished += 1
                on_trial(study, finished)
    except BaseException:
        for job in executor.close():
            record(study, asked.pop(job.number), {"state": "failed", "reason": "interrupted"}, settings)
        raise
    finally:
        executor.close()


def started_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial but the enqueued starting points not yet asked for (WAITING): those count for nothing."""
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]


def _same_params(study: optuna.Study, params: dict[str, Any], number: int) -> int | None:
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return next((t.number for t in study.get_trials(deepcopy=False, states=done) if t.params == params and t.number != number), None)


@contextmanager
def progress_bar(total: int, time_budget: float | None) -> Iterator[Callable[[optuna.Study, int], None]]:
    """A rich bar of finished trials whose label shows the best feasible trial so far."""
    from onnxopt import progress

    if not progress.enabled():
        yield lambda study, finished: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("tune"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("searching" + (f" for at most {time_budget:.0f} s" if time_budget else ""), total=total)

        def update(study: optuna.Study, finished: int) -> None:
            best = best_feasible(study)
            text = "no feasible trial yet" if best is None else f"best feasible #{best.number}: {best.values[0]:.2f}x, {_accuracy_text(best)}"
            bar.update(task, completed=len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]), description=text)

        yield update


def _accuracy_text(trial: optuna.trial.FrozenTrial) -> str:
    outcome = trial.user_attrs.get(OUTCOME, {})
    if outcome.get("drop_pts") is not None and outcome.get("accuracy") is not None:
        return f"{outcome['drop_pts']:+.2f} pts"
    return f"fidelity {outcome.get('fidelity', float('nan')):.5f}"
