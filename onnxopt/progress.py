"""Progress bars for long work (calibration, sensitivity analysis, profiling, evaluation).

One shared rich display on stderr: nested tasks add rows to it instead of fighting over the
terminal. Bars are shown only when stderr is a terminal and nobody asked for quiet (`--quiet`,
`set_quiet(True)` or ONNXOPT_QUIET=1), so logs, pipes and CI stay clean.

    with progress.task("profiling", total=n) as advance:
        for ...:
            ...
            advance()          # or advance(k)

    for feeds in progress.track(data, "calibration", total=len(data)):
        ...
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

_state: dict = {"quiet": False, "progress": None, "depth": 0, "console": None}


def set_quiet(quiet: bool = True) -> None:
    _state["quiet"] = bool(quiet)


def use_console(console) -> None:
    """Route bars to this rich Console regardless of terminal checks (tests, embedding); None resets."""
    _state["console"] = console


def enabled() -> bool:
    if _state["quiet"] or os.environ.get("ONNXOPT_QUIET"):
        return False
    if _state["console"] is not None:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _noop(amount: int = 1) -> None:
    return None


def _start():
    # rich costs a tenth of a second at start-up; loaded only when a bar is shown
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = _state["console"] or Console(stderr=True)
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    bar.start()
    return bar


@contextmanager
def task(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A progress row for the duration of the block; yields `advance(amount=1)`."""
    if not enabled():
        yield _noop
        return
    if _state["progress"] is None:
        _state["progress"] = _start()
    bar = _state["progress"]
    _state["depth"] += 1
    task_id = bar.add_task(description, total=total)
    try:
        yield lambda amount=1: bar.advance(task_id, amount)
    finally:
        bar.remove_task(task_id)
        _state["depth"] -= 1
        if _state["depth"] == 0:
            bar.stop()
            _state["progress"] = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress row; the row goes away when the loop ends or is abandoned."""
    if not enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with task(description, total) as advance:
        for item in items:
            yield item
            advance()
