"""A trial whose process dies is recorded as failed; the search goes on."""

from __future__ import annotations

import os

import onnxopt


def die(job):
    os._exit(3)  # what an out-of-memory kill or a crash in native code looks like to the study


def test_dead_trials_are_recorded_failed_not_lost(problem):
    result = onnxopt.tune(problem["model"], calibration=problem["calib"], data=problem["data"], labels=problem["labels"],
                          max_drop=1.0, trials=3, show_progress=False, trial_function=die)
    assert [t["state"] for t in result.trials] == ["failed"] * 3
    assert all("died (exit code 3)" in t["reason"] for t in result.trials)
    assert not result.found and result.closest is None
