"""The pre-deployment gate: compile (or take a compiled model), measure, judge every threshold.

A CI job runs `onnxopt gate` and the exit code decides: 0 when every threshold holds, 1 when any
fails, 2 when the gate could not be evaluated (bad model, bad data, a threshold it cannot measure).

Accuracy and fidelity are measured on fixed evaluation data with deterministic runs, so they give
the same number on every rerun. Latency does not: a shared CI runner is noisy. The latency
thresholds therefore use the confidence interval of interleaved, paired runs
(onnxopt.profiling.compare), not a point estimate:

- the 95% bootstrap interval of the median per-pair speedup (or of the optimized model's median
  latency) lies wholly on the good side of the threshold: **pass**;
- it lies wholly on the bad side: **fail**;
- it straddles the threshold: the gate measures another round of paired runs, pooled with the
  earlier ones (up to `latency_rounds`), which narrows the interval; if it still straddles, the
  result is **inconclusive** and passes (fails with `strict_latency=True`).

So a model that truly meets a threshold fails only when the interval misses the truth (at most
about 2.5% of runs, one-sided), and a real regression fails as soon as the measurements can tell it
apart from noise. A model that sits right on the threshold is the only case left to chance, and
the JSON says so (`decision: inconclusive`).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt import stages
from onnxopt.backends.base import batch_of
from onnxopt.errors import ConfigError, TargetNotAvailableError
from onnxopt.inputs import random_feeds
from onnxopt.report import CompileReport, write_text_atomic

# name -> (comparison, unit, what is measured)
THRESHOLDS: dict[str, tuple[str, str, str]] = {
    "max_drop": ("<=", "pts", "accuracy drop in percentage points (labeled top-1, else top-1 disagreement)"),
    "min_fidelity": (">=", "", "worst output's mean cosine similarity to the original on the data"),
    "min_speedup": (">=", "x", "median per-pair speedup over the original (95% CI rule)"),
    "max_latency_ms": ("<=", "ms", "optimized model's median latency (95% CI rule)"),
    "max_size_mb": ("<=", "MB", "optimized model's size"),
}


@dataclass
class Thresholds:
    max_drop: float | None = None
    min_fidelity: float | None = None
    min_speedup: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    def active(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


@dataclass
class Check:
    """One threshold: what was asked, what was measured, and the verdict."""

    name: str
    threshold: float
    op: str
    unit: str
    measured: float | None
    passed: bool
    decision: str  # pass, fail, inconclusive
    detail: str = ""
    seconds: float = 0.0

    def message(self) -> str:
        value = "n/a" if self.measured is None else _with_unit(self.measured, self.unit)
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.name}: {value} (needs {self.op} {_with_unit(self.threshold, self.unit)}) {verdict}" + (f" · {self.detail}" if self.detail else "")


@dataclass
class GateResult:
    passed: bool
    checks: list[Check]
    model: str
    target: str
    optimized: str | None = None
    seconds: float = 0.0
    report: CompileReport | None = None
    evaluation: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "exit_code": 0 if self.passed else 1,
            "model": self.model,
            "optimized": self.optimized,
            "target": self.target,
            "seconds": self.seconds,
            "failed": [c.name for c in self.failed],
            "checks": [asdict(c) for c in self.checks],
            "evaluation": self.evaluation,
            "latency": self.latency,
        }

    def summary(self) -> str:
        lines = [f"gate {'PASSED' if self.passed else 'FAILED'} · {self.model} · target {self.target}"]
        lines += [f"  {'ok  ' if c.passed else 'FAIL'} {c.message()}" for c in self.checks]
        return "\n".join(lines)

    def save_json(self, path) -> Path:
        import json

        from onnxopt.report import _jsonable

        return write_text_atomic(path, json.dumps(_jsonable(self.to_dict()), indent=2) + "\n")

    def junit_xml(self) -> str:
        return junit_xml(self.model, self.target, self.checks, self.seconds, self.summary())

    def save_junit(self, path) -> Path:
        return write_text_atomic(path, self.junit_xml())


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def _with_unit(value: float, unit: str) -> str:
    return f"{_fmt(value)}x" if unit == "x" else f"{_fmt(value)} {unit}".strip()


def _suite_name(model: str) -> str:
    return f"onnxopt.gate.{Path(model).stem or 'model'}"


def junit_xml(model: str, target: str, checks: list[Check], seconds: float, system_out: str = "", error: str | None = None) -> str:
    """JUnit XML as CI systems read it: one testcase per threshold, <failure> for unmet ones,
    one <error> testcase when the gate could not run."""
    suite_name = _suite_name(model)
    failures = sum(1 for c in checks if not c.passed)
    tests = len(checks) + (1 if error else 0)
    counts = {"tests": str(tests), "failures": str(failures), "errors": "1" if error else "0", "skipped": "0", "time": f"{seconds:.3f}"}
    root = ET.Element("testsuites", {"name": "onnxopt gate", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": suite_name, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), **counts})
    props = ET.SubElement(suite, "properties")
    for key, value in (("model", model), ("target", target)):
        ET.SubElement(props, "property", {"name": key, "value": str(value)})
    for check in checks:
        case = ET.SubElement(suite, "testcase", {"classname": suite_name, "name": check.name, "time": f"{check.seconds:.3f}"})
        if not check.passed:
            failure = ET.SubElement(case, "failure", {"message": check.message(), "type": "ThresholdNotMet"})
            failure.text = check.message()
        else:
            ET.SubElement(case, "system-out").text = check.message()
    if error:
        case = ET.SubElement(suite, "testcase", {"classname": suite_name, "name": "gate", "time": f"{seconds:.3f}"})
        ET.SubElement(case, "error", {"message": error, "type": "OnnxoptError"}).text = error
    if system_out:
        ET.SubElement(suite, "system-out").text = system_out
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --- the latency rule ----------------------------------------------------------------------


def decide(low: float, high: float, threshold: float, higher_is_better: bool) -> str:
    """pass / fail / inconclusive from a confidence interval against a threshold."""
    if higher_is_better:
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"


@dataclass
class _PooledTiming:
    base: list[float] = field(default_factory=list)
    cand: list[float] = field(default_factory=list)
    rounds: int = 0

    def speedup(self) -> tuple[float, float, float]:
        from onnxopt.profiling import bootstrap_median_ci

        ratios = np.asarray(self.base) / np.maximum(np.asarray(self.cand), 1e-12)
        low, high = bootstrap_median_ci(ratios)
        return float(np.median(ratios)), low, high

    def latency_ms(self) -> tuple[float, float, float]:
        from onnxopt.profiling import bootstrap_median_ci

        ms = np.asarray(self.cand) * 1e3
        low, high = bootstrap_median_ci(ms)
        return float(np.median(ms)), low, high

    def to_dict(self, batch: int) -> dict[str, Any]:
        from onnxopt.profiling import LatencyStats

        speedup, low, high = self.speedup()
        return {
            "baseline": LatencyStats.from_samples(self.base, batch).to_dict(),
            "candidate": LatencyStats.from_samples(self.cand, batch).to_dict(),
            "speedup": speedup,
            "ci95": [low, high],
            "pairs": len(self.base),
            "rounds": self.rounds,
        }


def _latency_decisions(timing: _PooledTiming, thresholds: dict[str, float]) -> dict[str, tuple[str, float, float, float]]:
    out = {}
    if "min_speedup" in thresholds:
        value, low, high = timing.speedup()
        out["min_speedup"] = (decide(low, high, thresholds["min_speedup"], True), value, low, high)
    if "max_latency_ms" in thresholds:
        value, low, high = timing.latency_ms()
        out["max_latency_ms"] = (decide(low, high, thresholds["max_latency_ms"], False), value, low, high)
    return out


def measure_latency(
    original: onnx.ModelProto,
    optimized: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    thresholds: dict[str, float],
    *,
    backend: Any,
    iters: int = 50,
    rounds: int = 3,
    log: Callable[[str], None] = lambda m: None,
) -> tuple[_PooledTiming, dict[str, tuple[str, float, float, float]]]:
    """Rounds of interleaved paired runs on the target's backend, pooled, until every latency threshold is decided."""
    timing = _PooledTiming()
    decisions: dict[str, tuple[str, float, float, float]] = {}
    for round_index in range(max(rounds, 1)):
        comparison = backend.compare(original, optimized, feeds, warmup=max(iters // 10, 2), iters=iters)
        timing.base += list(comparison.baseline_seconds)
        timing.cand += list(comparison.candidate_seconds)
        timing.rounds += 1
        decisions = _latency_decisions(timing, thresholds)
        undecided = [name for name, (d, *_rest) in decisions.items() if d == "inconclusive"]
        if not undecided:
            break
        if round_index + 1 < rounds:
            log(f"latency inconclusive for {', '.join(undecided)}; measuring another {iters} pairs")
    return timing, decisions


# --- the gate --------------------------------------------------------------------------------


def run_gate(
    model: Any,
    target: str = "ort-fp32",
    thresholds: Thresholds | None = None,
    *,
    optimized: Any = None,
    calibration: Any = None,
    data: Any = None,
    labels: Any = None,
    metric: Callable | None = None,
    output: str | None = None,
    input_shapes: dict | None = None,
    iters: int = 50,
    latency_rounds: int = 3,
    strict_latency: bool = False,
    threads: int = 0,
    seed: int = 0,
    eval_limit: int | None = None,
    recipe: Any = None,
    log: Callable[[str], None] | None = None,
) -> GateResult:
    """Compile `model` for `target` (or take `optimized`), measure what the thresholds need, judge.

    The compile stages run once (one load of the model). Accuracy and fidelity are measured on the
    optimized ONNX with ONNX Runtime, so a TensorRT target is judged on them on any machine; latency
    is timed on the target's backend, and a latency threshold its backend cannot run here is an error."""
    started = time.perf_counter()
    thresholds = thresholds or Thresholds()
    wanted = thresholds.active()
    if not wanted:
        raise ConfigError("the gate has no thresholds; give at least one of --max-drop, --min-fidelity, --min-speedup, --max-latency-ms, --max-size-mb")
    for name in ("max_drop", "min_fidelity"):
        if name in wanted and data is None:
            raise ConfigError(f"--{name.replace('_', '-')} needs evaluation data: pass --data PATH (real samples, disjoint from --calib)")
    if labels is not None and data is None:
        raise ConfigError("--labels needs --data: one class id per evaluation sample")
    if wanted.get("min_speedup", 1.0) <= 0 or wanted.get("max_latency_ms", 1.0) <= 0 or wanted.get("max_size_mb", 1.0) <= 0:
        raise ConfigError("--min-speedup, --max-latency-ms and --max-size-mb must be positive")

    say = log or (lambda message: None)
    opts = stages.CompileOptions(
        target=target, output=Path(output) if output is not None and optimized is None else None, calibration=calibration,
        recipe=recipe, input_shapes=dict(input_shapes or {}), profile=False, threads=threads, seed=seed,
        evaluation_data=data, labels=labels, metric=metric, eval_limit=eval_limit, log=say,
    )
    timed = [name for name in ("min_speedup", "max_latency_ms") if name in wanted]
    model_name = str(model) if not isinstance(model, onnx.ModelProto) else "model"
    loaded = stages.load(model, opts)
    backend = stages.target_backend(loaded, opts)
    missing = backend.availability() if timed else None
    if missing:
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in timed)
        raise TargetNotAvailableError(
            f"{flags} needs {backend.display_name} to time target {loaded.target}, and it cannot run here: {missing}; "
            f"drop {flags} to judge accuracy, fidelity and size on the ONNX, or run the gate on a machine with {backend.requirement}"
        )
    if optimized is None:
        say(f"compiling {model_name} for {loaded.target}")
        result_of_passes = stages.optimize(loaded, opts)
        optimized_name = output
    else:
        result_of_passes = stages.given(loaded, optimized)
        optimized_name = str(optimized) if not isinstance(optimized, onnx.ModelProto) else "optimized model"
    exported = stages.export(loaded, result_of_passes)
    readiness = stages.check_readiness(loaded, exported, opts)
    evaluated = stages.evaluate_stage(loaded, exported, opts)
    written = stages.write(exported, opts)

    checks: list[Check] = []
    if evaluated is not None:
        result = evaluated.result
        if "max_drop" in wanted:
            checks.append(_drop_check(result, wanted["max_drop"], evaluated.seconds))
        if "min_fidelity" in wanted:
            worst = min((n for n, d in result.outputs.items() if "cosine" in d), key=lambda n: result.outputs[n]["cosine"], default=None)
            detail = f"output {worst}, {result.samples} samples" if worst else "no float outputs"
            checks.append(_check("min_fidelity", wanted["min_fidelity"], result.fidelity, evaluated.seconds, detail))

    latency = None
    if timed:
        feeds = _first_sample(data, loaded.model, loaded.ctx.input_shapes) if data is not None else random_feeds(loaded.specs, seed=seed)
        say(f"timing original vs optimized on {backend.display_name}, {iters} interleaved pairs per round")
        t0 = time.perf_counter()
        timing, decisions = measure_latency(loaded.model, exported.model, feeds, wanted, backend=backend, iters=iters, rounds=latency_rounds, log=say)
        latency_seconds = time.perf_counter() - t0
        latency = timing.to_dict(batch_of(feeds))
        for name in timed:
            decision, value, low, high = decisions[name]
            passed = decision == "pass" or (decision == "inconclusive" and not strict_latency)
            unit = THRESHOLDS[name][1]
            detail = f"95% CI {_with_unit(low, unit)} to {_with_unit(high, unit)}, {len(timing.base)} pairs in {timing.rounds} round(s), {decision}"
            checks.append(Check(name, wanted[name], THRESHOLDS[name][0], unit, value, passed, decision, detail, latency_seconds))

    if "max_size_mb" in wanted:
        checks.append(_check("max_size_mb", wanted["max_size_mb"], _size_mb(exported.model), 0.0, f"original {_size_mb(loaded.model):.4g} MB"))

    order = list(THRESHOLDS)
    checks.sort(key=lambda c: order.index(c.name))
    passed = all(c.passed for c in checks)
    verdict = {"passed": passed, "checks": [asdict(c) for c in checks], "failed": [c.name for c in checks if not c.passed]}
    report = stages.assemble_report(loaded, result_of_passes, exported, written or optimized_name, readiness, evaluated, latency=latency, gate=verdict)
    return GateResult(
        passed=passed,
        checks=checks,
        model=model_name,
        target=report.target,
        optimized=optimized_name,
        seconds=time.perf_counter() - started,
        report=report,
        evaluation=evaluated.to_dict() if evaluated is not None else None,
        latency=latency,
    )


def _check(name: str, threshold: float, measured: float, seconds: float, detail: str = "") -> Check:
    op, unit, _ = THRESHOLDS[name]
    ok = measured >= threshold if op == ">=" else measured <= threshold
    return Check(name, threshold, op, unit, float(measured), ok, "pass" if ok else "fail", detail, seconds)


def _drop_check(result, threshold: float, seconds: float) -> Check:
    if result.accuracy is not None:
        a = result.accuracy
        detail = f"labeled top-1 {a['original']['top1'] * 100:.2f}% -> {a['optimized']['top1'] * 100:.2f}% on {a['labels']} samples"
        return _check("max_drop", threshold, a["drop_top1_pts"], seconds, detail)
    agreement = result.top1_agreement
    if agreement is None:
        raise ConfigError("--max-drop needs --labels, or a classifier output ([batch, classes]) to measure top-1 disagreement on")
    detail = f"no labels: share of samples whose top-1 changed ({result.classifier_output}), an upper bound on the accuracy drop"
    return _check("max_drop", threshold, (1.0 - agreement) * 100, seconds, detail)


def _first_sample(data: Any, model: onnx.ModelProto, shapes: dict) -> dict[str, np.ndarray]:
    """Real data for timing: the first evaluation sample (values rarely matter, shapes do)."""
    from onnxopt.calibration import open_calibration

    for feeds in open_calibration(data, model, limit=1, input_shapes=shapes):
        return feeds
    from onnxopt.errors import CalibrationError

    raise CalibrationError(f"evaluation data {data} holds no samples")


def _size_mb(model: onnx.ModelProto) -> float:
    """Serialized size with every weight, in MB (1e6 bytes), as the compile report counts it."""
    return model.ByteSize() / 1e6


def write_error_files(model: Any, target: str, error: str, json_path=None, junit_path=None) -> None:
    """When the gate cannot run (exit 2), CI still gets files that say why."""
    name = str(model) if not isinstance(model, onnx.ModelProto) else "model"
    try:
        _write_error_files(name, target, error, json_path, junit_path)
    except OSError:
        pass  # the original error matters more than the files


def _write_error_files(name: str, target: str, error: str, json_path, junit_path) -> None:
    import json

    if json_path:
        data = {"passed": False, "exit_code": 2, "error": error, "model": name, "target": target, "checks": []}
        write_text_atomic(json_path, json.dumps(data, indent=2) + "\n")
    if junit_path:
        write_text_atomic(junit_path, junit_xml(name, target, [], 0.0, error=error))
