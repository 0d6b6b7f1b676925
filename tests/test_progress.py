"""Progress bars: drawn on a terminal, silent when quiet or when stderr is not a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from onnxopt import progress
from onnxopt.calibration import open_calibration
from onnxopt.profiling import compare


@pytest.fixture
def terminal():
    buffer = io.StringIO()
    progress.use_console(Console(file=buffer, force_terminal=True, width=100))
    progress.set_quiet(False)
    yield buffer
    progress.use_console(None)
    progress.set_quiet(False)


def test_silent_when_stderr_is_not_a_terminal(capsys):
    assert not progress.enabled()
    with progress.task("work", total=3) as advance:
        advance()
    assert list(progress.track(range(3), "items")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_quiet_wins_over_a_terminal(terminal):
    progress.set_quiet(True)
    assert not progress.enabled()
    list(progress.track(range(3), "items"))
    assert terminal.getvalue() == ""


def test_nested_tasks_share_one_display(terminal):
    with progress.task("outer", total=2) as outer:
        for _ in range(2):
            assert list(progress.track(["a", "b"], "inner")) == ["a", "b"]
            outer()
    assert progress._state["progress"] is None and progress._state["depth"] == 0
    assert "outer" in terminal.getvalue()


def test_abandoned_loops_clean_up(terminal):
    for item in progress.track(range(10), "early exit"):
        if item == 2:
            break
    import gc

    gc.collect()
    assert progress._state["depth"] == 0 and progress._state["progress"] is None


def test_calibration_and_profiling_report_progress(terminal):
    data = open_calibration([{"x": 1}, {"x": 2}, {"x": 3}])
    assert len(list(data)) == 3
    comparison = compare(lambda: None, lambda: None, warmup=1, iters=4)
    assert comparison.pairs == 4
    assert "samples" in terminal.getvalue() and "profiling" in terminal.getvalue()
