"""The ort-fp32 target end to end, side by side with onnxsim and onnxslim, on the real models.

For every model present (the Fashion-MNIST example and the zoo), each tool optimizes the original;
then, in this one run on this machine, each result is timed against the original with interleaved
paired runs (onnxopt.profiling.compare: median per-pair speedup, bootstrap 95% CI) on a real
evaluation sample, and compared with the original on real evaluation data (onnxopt.evaluation).

    python benchmarks/bench_ort_fp32.py        # writes benchmarks/results/ort_fp32.md
    ONNXOPT_BENCH_QUICK=1 python benchmarks/bench_ort_fp32.py   # fewer pairs and samples

ORT runs with its own graph optimizations on (level all) for every candidate, so the speedup is
what a tool adds on top of what onnxruntime already does.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import onnx

import onnxopt
from onnxopt.backends.ort import OrtBackend
from onnxopt.calibration import open_calibration
from onnxopt.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ZOO = Path(os.environ.get("ONNXOPT_ZOO") or Path.home() / ".cache" / "onnxopt" / "zoo")
QUICK = bool(os.environ.get("ONNXOPT_BENCH_QUICK"))
PAIRS = 12 if QUICK else 60
EVAL_SAMPLES = 4 if QUICK else 16


def models() -> list[tuple[str, Path, Path]]:
    """(name, model, evaluation data) for every model that is present."""
    found = []
    example = ROOT / "models" / "example"
    if (example / "fashion_cnn.onnx").exists():
        found.append(("fashion_cnn", example / "fashion_cnn.onnx", example / "eval.npz"))
    for name in ("efficientnet_lite0", "minilm", "ppocr_det", "ppocr_rec", "ppocr_cls"):
        folder = ZOO / name
        if (folder / "meta.json").exists():
            found.append((name, folder / "model.onnx", folder / "eval"))
    return found


def run_onnxopt(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnxopt.compile(model, target="ort-fp32", profile=False, save=False).model


def run_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return simplified


def run_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


TOOLS = {"onnxopt ort-fp32": run_onnxopt, "onnxsim": run_onnxsim, "onnxslim": run_onnxslim}


def bench_model(name: str, path: Path, data: Path) -> list[dict]:
    try:
        original = onnx.load(str(path))
        feeds = next(iter(open_calibration(data, original, limit=1)))
    except Exception as exc:
        row = {"model": name, "tool": "(loading)", "error": f"{type(exc).__name__}: {str(exc).strip()[:120]}"}
        print(json.dumps(row), flush=True)
        return [row]
    backend = OrtBackend()
    rows = []
    for tool, optimize in TOOLS.items():
        row = {"model": name, "tool": tool}
        try:
            started = time.perf_counter()
            optimized = optimize(original)
            row["seconds"] = time.perf_counter() - started
            row["nodes"] = (len(original.graph.node), len(optimized.graph.node))
            row["size_mb"] = (original.ByteSize() / 1e6, optimized.ByteSize() / 1e6)
            comparison = backend.compare(original, optimized, feeds, warmup=max(PAIRS // 10, 2), iters=PAIRS)
            row["speedup"] = (comparison.speedup, comparison.ci_low, comparison.ci_high, comparison.pairs)
            row["p50_ms"] = (comparison.baseline.p50_ms, comparison.candidate.p50_ms)
            result = evaluate(original, optimized, data, limit=EVAL_SAMPLES)
            row["fidelity"] = result.fidelity
            row["agreement"] = result.top1_agreement
            row["samples"] = result.samples
        except Exception as exc:  # a tool failing on a model is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}"
            if os.environ.get("ONNXOPT_DEBUG"):
                traceback.print_exc()
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict], seconds: float) -> str:
    lines = [
        "## ort-fp32 vs onnxsim vs onnxslim",
        "",
        "Each tool optimizes the original model; the speedup is the median of per-pair ratios "
        f"(original time / optimized time) over {PAIRS} interleaved pairs on one real evaluation sample, "
        "with its bootstrap 95% CI, ORT graph optimizations on for both; fidelity is the worst output's "
        f"mean cosine similarity to the original on {EVAL_SAMPLES} real evaluation samples.",
        "",
        "| model | tool | nodes | size MB | p50 ms (orig → opt) | speedup (95% CI) | fidelity | top-1 agreement | optimize s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | failed: {r['error'].replace('|', '/')} | | | | | | |")
            continue
        s, lo, hi, _pairs = r["speedup"]
        agreement = "–" if r["agreement"] is None else f"{r['agreement'] * 100:.1f}%"
        lines.append(
            f"| {r['model']} | {r['tool']} | {r['nodes'][0]} → {r['nodes'][1]} | {r['size_mb'][0]:.2f} → {r['size_mb'][1]:.2f} | "
            f"{r['p50_ms'][0]:.3f} → {r['p50_ms'][1]:.3f} | {s:.3f}× ({lo:.2f}–{hi:.2f}) | {r['fidelity']:.6f} | {agreement} | {r['seconds']:.2f} |"
        )
    lines += ["", f"Run in {seconds:.0f} s{' (quick mode)' if QUICK else ''}: `python benchmarks/bench_ort_fp32.py`.", ""]
    return "\n".join(lines)


def main() -> int:
    started = time.perf_counter()
    found = models()
    if not found:
        print("no models found: materialize the zoo (python -m onnxopt.models.zoo) or add models/example", file=sys.stderr)
        return 1
    rows = []
    for name, path, data in found:
        print(f"== {name}", flush=True)
        rows += bench_model(name, path, data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ort_fp32.md").write_text(markdown(rows, time.perf_counter() - started), encoding="utf-8")
    print(f"wrote {RESULTS / 'ort_fp32.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
