"""TuneResult: the best model and its report, the Pareto front, every trial; JSON, text and HTML."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxopt.report import CompileReport, write_text_atomic

# Optuna is imported by the functions that need it: `import onnxopt` stays light.
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def trial_record(trial, targets: tuple[str, ...], command: list[str]) -> dict[str, Any]:
    """One Optuna FrozenTrial as the JSON holds it: parameters, state, speedup with its interval,
    accuracy, size, time, where it ran."""
    from onnxopt.tune.space import knobs, recipe_for
    from onnxopt.tune.study import OUTCOME, feasible

    outcome = dict(trial.user_attrs.get(OUTCOME, {}))
    recipe = recipe_for(trial.params, knobs(targets))
    return {
        "number": trial.number,
        "state": STATES.get(trial.state.name, trial.state.name.lower()),
        "feasible": feasible(trial),
        "params": dict(trial.params),
        "command": shlex.join(command + recipe.cli_args()),
        "speedup": outcome.get("speedup"),
        "ci95": outcome.get("ci95"),
        "drop_pts": outcome.get("drop_pts"),
        "drop_stderr": outcome.get("drop_stderr"),  # the budget charges --drop-sigmas of these
        "fidelity": outcome.get("fidelity"),
        "accuracy": outcome.get("accuracy"),
        "metric": outcome.get("metric"),  # the user metric of both models, when tune was given one
        "size_mb": outcome.get("size_mb"),
        "macs_ratio": (outcome["macs"] / outcome["macs_before"]) if outcome.get("macs") and outcome.get("macs_before") else None,
        "seconds": outcome.get("seconds"),
        "compile_s": outcome.get("compile_s"),
        "host": outcome.get("host"),
        "worker": outcome.get("worker"),
        "violation": sum(max(v, 0.0) for v in trial.constraints.values()) if trial.constraints else None,
        "reason": outcome.get("reason") or ("interrupted: its run ended before the trial did" if trial.state.name == "FAIL" and not outcome else None),
    }


@dataclass
class TuneResult:
    """What `onnxopt.tune` found. `model`/`report` are the chosen model: of the fastest feasible trials
    (`final_selection`, each compiled again and re-measured), the fastest that still met the budget."""

    executor: str
    objective: str  # "drop" (points, lower is better) or "fidelity"
    budget: dict[str, Any]
    trials: list[dict[str, Any]]
    pareto: list[int]
    best: dict[str, Any] | None = None
    closest: dict[str, Any] | None = None
    model: Any = None  # onnx.ModelProto
    report: CompileReport | None = None
    output: str | None = None
    seconds: float = 0.0
    source: str = ""
    notes: list[str] = field(default_factory=list)
    final_selection: list[dict[str, Any]] = field(default_factory=list)  # the re-checked candidates, see tune/final.py

    @property
    def found(self) -> bool:
        return self.best is not None

    def front(self) -> list[dict[str, Any]]:
        by_number = {t["number"]: t for t in self.trials}
        return sorted((by_number[n] for n in self.pareto), key=lambda t: -(t["speedup"] or 0))

    def to_dict(self) -> dict[str, Any]:
        from onnxopt.report import _jsonable

        return _jsonable({
            "found": self.found,
            "executor": self.executor,
            "source": self.source,
            "objective": self.objective,
            "budget": self.budget,
            "seconds": self.seconds,
            "best": self.best,
            "closest": self.closest,
            "output": self.output,
            "pareto": self.pareto,
            "final_selection": self.final_selection,
            "trials": self.trials,
            "report": self.report.to_dict() if self.report is not None else None,
            "notes": self.notes,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save_json(self, path) -> Path:
        return write_text_atomic(path, self.to_json() + "\n")

    def save_html(self, path) -> Path:
        from onnxopt.tune.html import render

        return write_text_atomic(path, render(self))

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t["state"]] = counts.get(t["state"], 0) + 1
        lines = [
            f"tune on {self.executor}: {len(self.trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) in {self.seconds:.0f} s",
            "Pareto front (feasible):" if self.pareto else "Pareto front: empty (no feasible trial)",
        ]
        for t in self.front():
            lines.append(f"  #{t['number']:<3} {describe(t, self.objective)}  {t['command']}")
        if self.final_selection:
            lines.append("final selection (compiled again, re-measured with more pairs):")
        for e in self.final_selection:
            if e["feasible"]:
                lines.append(f"  #{e['number']:<3} {e['speedup']:.2f}x (95% CI {e['ci95'][0]:.2f}-{e['ci95'][1]:.2f}, {e['pairs']} pairs; "
                             f"{e['search_speedup']:.2f}x in the search)" + ("  <- chosen" if e["chosen"] else ""))
            else:
                lines.append(f"  #{e['number']:<3} {e['reason']}")
        if self.best is not None:
            final = next((e for e in self.final_selection if e["chosen"]), None)
            lines.append(f"best: #{self.best['number']} {describe(self.best, self.objective)} in the search"
                         + (f", {final['speedup']:.2f}x re-measured" if final else "") + (f", wrote {self.output}" if self.output else ""))
        elif self.closest is not None:
            lines.append(f"no trial met the budget; closest: #{self.closest['number']} {describe(self.closest, self.objective)}  {self.closest['command']}")
        else:
            lines.append("no trial met the budget, and none completed")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def describe(trial: dict[str, Any], objective: str) -> str:
    speed = "speedup n/a" if trial.get("speedup") is None else f"{trial['speedup']:.2f}x (95% CI {trial['ci95'][0]:.2f}-{trial['ci95'][1]:.2f})"
    if objective == "drop" and trial.get("drop_pts") is not None:
        accuracy = f"{trial['drop_pts']:+.2f} pts"
    elif trial.get("fidelity") is not None:
        accuracy = f"fidelity {trial['fidelity']:.5f}"
    else:
        accuracy = "accuracy n/a"
    size = f", {trial['size_mb']:.2f} MB" if trial.get("size_mb") is not None else ""
    return f"{speed}, {accuracy}{size}"
