"""The gate: thresholds judged, exit codes 0/1/2, JSON and JUnit that name the failing threshold,
and the confidence-interval rule for latency (on scripted timings, never on measured speed)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from onnxopt.cli import main
from onnxopt.errors import ConfigError
from onnxopt.gate import Thresholds, decide, measure_latency, run_gate
from onnxopt.profiling import LatencyComparison, LatencyStats
from tests.evalkit import classifier, samples, save, weights, write_folder


@pytest.fixture
def files(tmp_path):
    w, b = weights()
    noisy = w + np.random.default_rng(5).standard_normal(w.shape) * 0.3
    original = save(classifier(w, b), tmp_path / "net.onnx")
    optimized = save(classifier(noisy, b), tmp_path / "net.noisy.onnx")
    data = write_folder(tmp_path / "eval", samples(30))
    np.save(tmp_path / "labels.npy", np.arange(30) % 10)
    return original, optimized, data, tmp_path / "labels.npy"


def test_decide_uses_the_whole_interval():
    assert decide(1.35, 1.5, 1.3, higher_is_better=True) == "pass"
    assert decide(1.0, 1.2, 1.3, higher_is_better=True) == "fail"
    assert decide(1.25, 1.35, 1.3, higher_is_better=True) == "inconclusive"
    assert decide(4.0, 4.5, 5.0, higher_is_better=False) == "pass"
    assert decide(5.5, 6.0, 5.0, higher_is_better=False) == "fail"
    assert decide(4.8, 5.2, 5.0, higher_is_better=False) == "inconclusive"


class ScriptedBackend:
    """Returns prepared paired timings round by round, so the decision rule is tested without timing."""

    def __init__(self, rounds):
        self.rounds = list(rounds)
        self.calls = 0

    def compare(self, baseline, candidate, feeds, *, warmup, iters):
        base, cand = self.rounds[self.calls]
        self.calls += 1
        stats = LatencyStats.from_samples(base)
        return LatencyComparison(stats, LatencyStats.from_samples(cand), 1.0, 1.0, 1.0, len(base), tuple(base), tuple(cand))


def test_latency_rounds_stop_once_decided():
    rng = np.random.default_rng(0)
    clear = (list(2.0 + rng.random(30) * 0.01), list(1.0 + rng.random(30) * 0.01))  # 2x, tight
    backend = ScriptedBackend([clear, clear, clear])
    timing, decisions = measure_latency(None, None, {}, {"min_speedup": 1.5}, backend=backend, iters=30, rounds=3)
    assert backend.calls == 1 and decisions["min_speedup"][0] == "pass"
    timing, decisions = measure_latency(None, None, {}, {"min_speedup": 3.0}, backend=ScriptedBackend([clear]), iters=30, rounds=3)
    assert decisions["min_speedup"][0] == "fail"


def test_noisy_rounds_are_pooled_until_the_interval_clears_the_threshold():
    rng = np.random.default_rng(1)

    def noisy_round(n=20):
        cand = 1.0 + rng.random(n) * 0.05
        base = cand * rng.normal(1.25, 0.15, n)  # a true 1.25x speedup, noisy pairs
        return list(base), list(cand)

    backend = ScriptedBackend([noisy_round() for _ in range(6)])
    timing, decisions = measure_latency(None, None, {}, {"min_speedup": 1.2}, backend=backend, iters=20, rounds=6)
    assert decisions["min_speedup"][0] == "pass"
    assert backend.calls > 1, "the first round should have been inconclusive"
    assert timing.rounds == backend.calls and len(timing.base) == 20 * backend.calls


def test_inconclusive_after_all_rounds():
    rng = np.random.default_rng(2)
    base = list(1.0 + rng.normal(0, 0.3, 10).clip(-0.5, 0.5))
    cand = [1.0] * 10
    timing, decisions = measure_latency(None, None, {}, {"min_speedup": 1.0}, backend=ScriptedBackend([(base, cand)] * 2), iters=10, rounds=2)
    assert decisions["min_speedup"][0] == "inconclusive" and timing.rounds == 2


def test_gate_met_and_unmet_in_the_api(files):
    original, optimized, data, labels = files
    met = run_gate(original, thresholds=Thresholds(min_fidelity=0.5, max_size_mb=1.0), optimized=optimized, data=data)
    assert met.passed and {c.name for c in met.checks} == {"min_fidelity", "max_size_mb"}
    unmet = run_gate(original, thresholds=Thresholds(min_fidelity=0.99999, max_size_mb=1.0), optimized=optimized, data=data, labels=labels)
    assert not unmet.passed and [c.name for c in unmet.failed] == ["min_fidelity"]
    fidelity = next(c for c in unmet.checks if c.name == "min_fidelity")
    assert fidelity.measured == pytest.approx(unmet.evaluation["fidelity"]) and fidelity.measured < 0.99999


def test_max_drop_without_labels_counts_changed_predictions(files):
    original, optimized, data, _ = files
    result = run_gate(original, thresholds=Thresholds(max_drop=100.0), optimized=optimized, data=data)
    check = result.checks[0]
    agreement = result.evaluation["outputs"]["logits"]["top1_agreement"]
    assert check.measured == pytest.approx((1 - agreement) * 100) and "no labels" in check.detail


def test_gate_compiles_when_no_optimized_model_is_given(files):
    original, _, data, labels = files
    result = run_gate(original, "ort-fp32", Thresholds(max_drop=0.0, min_fidelity=0.9999), data=data, labels=labels)
    assert result.passed and result.report.passes, "the compile's passes belong in the report"
    assert result.report.evaluation["accuracy"]["drop_top1_pts"] == 0.0


def test_gate_refuses_what_it_cannot_measure(files):
    original, optimized, data, _ = files
    with pytest.raises(ConfigError, match="no thresholds"):
        run_gate(original, optimized=optimized)
    with pytest.raises(ConfigError, match="needs evaluation data"):
        run_gate(original, thresholds=Thresholds(min_fidelity=0.9), optimized=optimized)
    with pytest.raises(ConfigError, match="must be positive"):
        run_gate(original, thresholds=Thresholds(min_speedup=0), optimized=optimized)


def _gate(*args):
    return CliRunner().invoke(main, ["gate", *map(str, args), "-q"])


def test_cli_exit_0_when_met_with_json_and_junit(files, tmp_path):
    original, optimized, data, labels = files
    result = _gate(original, "--optimized", optimized, "--data", data, "--min-fidelity", 0.5, "--max-size-mb", 1,
                   "--min-speedup", 0.01, "--iters", 6, "--json", tmp_path / "g.json", "--junit", tmp_path / "g.xml")
    assert result.exit_code == 0, result.output
    data_json = json.loads((tmp_path / "g.json").read_text())
    assert data_json["passed"] is True and data_json["failed"] == []
    assert [c["name"] for c in data_json["checks"]] == ["min_fidelity", "min_speedup", "max_size_mb"]
    speed = data_json["checks"][1]
    assert speed["measured"] > 0 and "95% CI" in speed["detail"]
    suite = ET.parse(tmp_path / "g.xml").getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "0"
    assert [case.get("name") for case in suite.iter("testcase")] == ["min_fidelity", "min_speedup", "max_size_mb"]


def test_cli_exit_1_names_the_failing_threshold(files, tmp_path):
    original, optimized, data, labels = files
    result = _gate(original, "--optimized", optimized, "--data", data, "--labels", labels, "--min-fidelity", 0.5,
                   "--max-size-mb", 1e-6, "--min-speedup", 1000, "--iters", 6, "--latency-rounds", 1,
                   "--json", tmp_path / "g.json", "--junit", tmp_path / "g.xml", "--report", tmp_path / "g.html")
    assert result.exit_code == 1, result.output
    assert "FAIL max_size_mb" in result.output and "FAIL min_speedup" in result.output
    data_json = json.loads((tmp_path / "g.json").read_text())
    assert data_json["passed"] is False and data_json["exit_code"] == 1
    assert set(data_json["failed"]) == {"max_size_mb", "min_speedup"}
    size = next(c for c in data_json["checks"] if c["name"] == "max_size_mb")
    assert size["passed"] is False and size["measured"] > 1e-6 and size["threshold"] == 1e-6
    suite = ET.parse(tmp_path / "g.xml").getroot().find("testsuite")
    failed = {case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None}
    assert failed == {"max_size_mb", "min_speedup"} and suite.get("failures") == "2"
    page = (tmp_path / "g.html").read_text()
    assert "Gate failed" in page and "max_size_mb" in page


def test_cli_exit_2_on_errors_still_writes_files(files, tmp_path):
    original, optimized, _, _ = files
    result = _gate(original, "--optimized", optimized, "--max-drop", 1, "--json", tmp_path / "g.json", "--junit", tmp_path / "g.xml")
    assert result.exit_code == 2 and "needs evaluation data" in result.output
    assert json.loads((tmp_path / "g.json").read_text())["exit_code"] == 2
    error = ET.parse(tmp_path / "g.xml").getroot().find("testsuite/testcase/error")
    assert error is not None and "--data" in error.get("message")
    result = _gate(tmp_path / "missing.onnx", "--max-size-mb", 1)
    assert result.exit_code == 2 and "no such file" in result.output


def test_gate_passes_calibration_to_the_compile(files, tmp_path):
    original, _, data, _ = files
    calib = write_folder(tmp_path / "calib", samples(4, seed=9))
    result = _gate(original, "--calib", calib, "--data", data, "--min-fidelity", 0.9999)
    assert result.exit_code == 0, result.output
    result = _gate(original, "--calib", tmp_path / "nowhere", "--data", data, "--min-fidelity", 0.9999)
    assert result.exit_code == 2 and "calibration data" in result.output and "no such file" in result.output
