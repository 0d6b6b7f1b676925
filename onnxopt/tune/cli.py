"""The `onnxopt tune` command's work: run the search, write the reports, print the front, pick the exit code."""

from __future__ import annotations

from collections.abc import Callable

from onnxopt.tune import tune


def run_tune_command(model, *, report=None, json_path=None, echo: Callable[[str], None] = print, **options) -> int:
    """0 when a model met the budget, 1 when none did (the front so far and the closest trial are printed)."""
    result = tune(model, **options)
    if json_path:
        result.save_json(json_path)
    if report:
        result.save_html(report)
    echo(result.summary())
    return 0 if result.found else 1
