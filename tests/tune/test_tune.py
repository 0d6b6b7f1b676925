"""`onnxopt tune` end to end on a real model and real data: the result, its JSON and HTML, the exit
codes, and resuming a study from its storage after the process was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser

import onnx
import optuna
import pytest

from tests.tune.tunekit import onnxopt_cli


def test_finds_a_feasible_model_and_writes_it(small_tune):
    result, out = small_tune
    assert result.found and result.executor == "local"
    assert result.best["feasible"] and result.best["drop_pts"] <= 2.0
    # the fastest feasible trials (up to final_candidates=3) were compiled again and re-measured with more pairs;
    # the chosen one is the fastest of those that still met the budget
    feasible = sorted((t for t in result.trials if t["feasible"]), key=lambda t: -t["speedup"])
    assert [e["number"] for e in result.final_selection] == [t["number"] for t in feasible[:3]]
    remeasured = [e for e in result.final_selection if e["feasible"]]
    winner = max(remeasured, key=lambda e: e["speedup"])
    assert result.best["number"] == winner["number"] and winner["chosen"]
    assert sum(e["chosen"] for e in result.final_selection) == 1
    for entry in remeasured:
        assert entry["pairs"] == 32 and entry["ci95"][0] <= entry["speedup"] <= entry["ci95"][1] and entry["drop_pts"] <= 2.0
    # the chosen model was compiled again, with its full report, and written
    assert result.report is not None and result.report.evaluation["accuracy"] is not None
    assert result.report.latency["speedup"] == winner["speedup"]
    onnx.checker.check_model(onnx.load(out))
    assert result.output == str(out)


def test_json_holds_every_trial_with_what_it_measured(small_tune):
    result, _ = small_tune
    data = json.loads(result.to_json())
    assert data["executor"] == "local" and data["pareto"] == result.pareto
    assert data["final_selection"] == result.final_selection and data["final_selection"]
    assert len(data["trials"]) == 3
    complete = [t for t in data["trials"] if t["state"] == "complete"]
    assert complete
    for trial in complete:
        for key in ("params", "state", "speedup", "ci95", "drop_pts", "drop_stderr", "fidelity", "size_mb", "seconds", "host", "worker", "command"):
            assert trial[key] is not None, key
        assert trial["ci95"][0] <= trial["speedup"] <= trial["ci95"][1]
        assert trial["command"].startswith("onnxopt compile ") and "--target" in trial["command"]
    assert data["trials"][0]["params"]["target"] == "ort-int8"  # the plain recipes go first


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_draws_the_scatter_front_and_choice(small_tune, tmp_path):
    result, _ = small_tune
    page = result.save_html(tmp_path / "tune.html").read_text()
    parser = _Collect()
    parser.feed(page)
    classes = [attrs.get("class") for tag, attrs in parser.tags]
    assert classes.count("trial") == sum(1 for t in result.trials if t["state"] == "complete")
    assert classes.count("front") == len(result.pareto) and "chosen" in classes and "budget" in classes
    assert "http://" not in page.replace("http://www.w3.org", "") and "<script" not in page
    for trial in result.front():
        assert trial["command"].split(" --calib")[0] in page


def test_impossible_budget_exits_1_with_the_front_and_closest_trial(problem, tmp_path):
    report = tmp_path / "tune.json"
    proc = onnxopt_cli("tune", problem["model"], "--calib", problem["calib"], "--data", problem["data"], "--labels", problem["labels"],
                       "--max-drop", "-50", "--targets", "ort-fp32", "--trials", "2", "--iters", "4", "--subset", "0", "--json", report)
    assert proc.returncode == 1, proc.stderr
    assert "Pareto front: empty" in proc.stdout and "no trial met the budget; closest: #" in proc.stdout
    assert "Traceback" not in proc.stderr
    data = json.loads(report.read_text())
    assert data["found"] is False and data["closest"] is not None and data["pareto"] == []


def test_bad_ray_address_is_one_line_and_exit_2_before_any_work(problem, tmp_path):
    started = time.monotonic()
    proc = onnxopt_cli("tune", problem["model"], "--calib", problem["calib"], "--data", problem["data"], "--max-drop", "1",
                       "--ray", "127.0.0.1:1", "--storage", tmp_path / "study.log")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no Ray cluster answers" in proc.stderr
    assert not (tmp_path / "study.log").exists()  # nothing started
    assert time.monotonic() - started < 60


def test_one_budget_is_required(problem):
    proc = onnxopt_cli("tune", problem["model"], "--calib", problem["calib"], "--data", problem["data"])
    assert proc.returncode == 2 and "exactly one accuracy budget" in proc.stderr


def test_resumes_from_storage_after_the_process_is_killed(problem, tmp_path):
    storage = tmp_path / "study.log"
    args = [sys.executable, "-m", "onnxopt.cli", "tune", problem["model"], "--calib", problem["calib"], "--data", problem["data"],
            "--labels", problem["labels"], "--max-drop", "2", "--targets", "ort-fp32", "--iters", "4", "--subset", "0",
            "--storage", str(storage), "-q"]
    first = subprocess.Popen([*args, "--trials", "20"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and _finished(storage) < 1:
            time.sleep(1)
        assert _finished(storage) >= 1, "the first run finished no trial"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no Ctrl-C handler runs: the worst case
        first.wait()
    before = _trials(storage)
    done_before = {t.number: t.values for t in before if t.state == optuna.trial.TrialState.COMPLETE}

    proc = subprocess.run([*args, "--trials", str(len(before) + 2)], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    after = _trials(storage)
    assert len(after) == len(before) + 2  # continued, numbering on
    assert {t.number: t.values for t in after if t.number in done_before} == done_before  # earlier results kept
    assert all(t.state.is_finished() for t in after)  # the trial the kill interrupted is recorded, as failed
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in after)


def _trials(storage):
    from onnxopt.tune.study import open_storage

    return optuna.load_study(study_name="onnxopt-tune", storage=open_storage(str(storage))).get_trials()


def _finished(storage) -> int:
    if not storage.exists():
        return 0
    try:
        return sum(1 for t in _trials(storage) if t.state.is_finished())
    except (KeyError, ValueError, optuna.exceptions.OptunaError):
        return 0


def test_negative_drop_sigmas_is_a_config_error(problem):
    proc = onnxopt_cli("tune", problem["model"], "--calib", problem["calib"], "--data", problem["data"], "--max-drop", "1", "--drop-sigmas", "-1")
    assert proc.returncode == 2 and "--drop-sigmas" in proc.stderr and proc.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("bad", ["0"])
def test_workers_must_be_positive(problem, bad):
    proc = onnxopt_cli("tune", problem["model"], "--calib", problem["calib"], "--data", problem["data"], "--max-drop", "1", "--workers", bad)
    assert proc.returncode == 2 and "at least 1" in proc.stderr


def test_tuning_data_that_is_calibration_data_is_noted(problem):
    from onnxopt.ir import load_model
    from onnxopt.tune import _overlap_note

    original = load_model(problem["model"])
    assert _overlap_note(original, {"calib": problem["calib"], "data": problem["data"]}) is None
    note = _overlap_note(original, {"calib": problem["calib"], "data": problem["calib"]})
    assert note.startswith("32 of the 32 tuning samples are also calibration samples")
