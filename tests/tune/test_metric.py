"""A user metric through the API: it replaces the accuracy measure of every trial and of the re-check."""

from __future__ import annotations

import pytest

import onnxopt
from onnxopt.errors import ConfigError
from tests.tune.tunekit import top1_accuracy


def test_user_metric_is_the_accuracy_objective(problem, tmp_path):
    result = onnxopt.tune(problem["model"], calibration=problem["calib"], data=problem["data"], labels=problem["labels"],
                          metric=top1_accuracy, max_drop=0.02, targets=("ort-fp32",), trials=2, profile_iters=8,
                          output=tmp_path / "best.onnx", show_progress=False)
    complete = [t for t in result.trials if t["state"] == "complete"]
    assert len(complete) == 2  # the plain float recipe, then the pruned seed
    for trial in complete:
        values = trial["metric"]["values"]["top1_accuracy"]
        assert trial["metric"]["name"] == "top1_accuracy"
        # the drop is in the metric's units (a fraction here), not the labeled points
        assert trial["drop_pts"] == pytest.approx(values["original"] - values["optimized"])
        assert trial["drop_pts"] == pytest.approx(trial["accuracy"]["drop_top1_pts"] / 100, abs=1e-9)
        assert trial["feasible"] == (trial["drop_pts"] <= 0.02)
    assert result.found and result.best["drop_pts"] <= 0.02


def test_a_metric_that_cannot_reach_the_trials_is_one_clear_error(problem):
    with pytest.raises(ConfigError, match="module-level function"):
        onnxopt.tune(problem["model"], calibration=problem["calib"], data=problem["data"], metric=lambda outputs, labels: 1.0,
                     max_drop=0.1, show_progress=False)
    with pytest.raises(ConfigError, match="needs --max-drop"):
        onnxopt.tune(problem["model"], calibration=problem["calib"], data=problem["data"], metric=top1_accuracy,
                     min_fidelity=0.99, show_progress=False)
