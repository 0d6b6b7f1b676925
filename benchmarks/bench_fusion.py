"""onnxopt (ort-fp32) against onnxsim and onnxslim on the zoo models, in one run.

    python benchmarks/bench_fusion.py [--models NAME ...] [--iters 40] [--threads 1] [--repeats 9]

For every model and tool: node count, the tool's median wall time in this process over --repeats
calls after a first one, and the first call's own time (onnxopt as a user calls
`onnxopt.compile(..., profile=False, verify="off")`, its passes alone in brackets; onnxsim.simplify;
onnxslim.slim), the largest output difference from the original on a real zoo eval input (relative
to the output's largest magnitude), and the paired ONNX Runtime latency ratio against the original
(OrtBackend.compare: alternating runs, median of per-pair ratios, bootstrap 95% interval; > 1 is
faster). Writes the markdown table to benchmarks/results/fusion.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import onnx

import onnxopt
from onnxopt.backends.ort import OrtBackend
from onnxopt.runtime import run_model

MODELS = ["efficientnet_lite0", "minilm", "ppocr_det", "ppocr_rec", "ppocr_cls"]
RESULTS = Path(__file__).parent / "results" / "fusion.md"


def zoo_dir() -> Path:
    return Path(os.environ.get("ONNXOPT_ZOO") or Path.home() / ".cache" / "onnxopt" / "zoo")


def run_onnxopt(path: Path, model: onnx.ModelProto):
    start = time.perf_counter()
    result = onnxopt.compile(path, target="ort-fp32", save=False, profile=False, verify="off")
    wall = time.perf_counter() - start
    return result.model, wall, sum(r.seconds for r in result.report.passes)


def run_onnxsim(path: Path, model: onnx.ModelProto):
    import onnxsim

    start = time.perf_counter()
    simplified, ok = onnxsim.simplify(model)
    wall = time.perf_counter() - start
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return simplified, wall, None


def run_onnxslim(path: Path, model: onnx.ModelProto):
    import onnxslim

    start = time.perf_counter()
    slimmed = onnxslim.slim(model)
    return slimmed, time.perf_counter() - start, None


TOOLS = {"onnxopt": run_onnxopt, "onnxsim": run_onnxsim, "onnxslim": run_onnxslim}


def max_difference(original: onnx.ModelProto, candidate: onnx.ModelProto, feeds) -> float:
    want, got = run_model(original, feeds), run_model(candidate, feeds)
    return max(float(np.max(np.abs(got[k] - want[k]))) / (float(np.max(np.abs(want[k]))) or 1.0) for k in want)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (all threads): on a shared machine it
    varies far less than wall time, which other tenants' load inflates."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_runs(path: Path, repeats: int) -> tuple[dict, dict, dict]:
    """Every tool's first call (one-time costs such as lazy imports: sympy for ORT's symbolic shape
    inference), then `repeats` rounds calling each tool in turn, so that a slow spell on this shared
    machine hits all tools alike. Returns the timed runs, the first calls' times and the errors."""
    runs: dict[str, list] = {tool: [] for tool in TOOLS}
    firsts, errors = {}, {}
    for round_ in range(repeats + 1):
        for tool, run in TOOLS.items():
            if tool in errors:
                continue
            model = onnx.load(str(path))
            cpu_start = cpu_seconds()
            try:
                result = run(path, model)
            except Exception as exc:  # a peer tool failing on a model is a result, not a crash
                errors[tool] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
                continue
            result = (*result, cpu_seconds() - cpu_start)
            if round_ == 0:
                firsts[tool] = result[1]
            else:
                runs[tool].append(result)
    return runs, firsts, errors


def bench_model(name: str, backend: OrtBackend, iters: int, repeats: int) -> list[dict]:
    folder = zoo_dir() / name
    path = folder / "model.onnx"
    original = onnx.load(str(path))
    sample = sorted((folder / "eval").glob("*.npz"))[0]
    with np.load(sample) as data:
        feeds = {k: data[k] for k in data.files}
    rows = [{"model": name, "tool": "original", "nodes": len(original.graph.node)}]
    runs, firsts, errors = timed_runs(path, repeats)
    for tool in TOOLS:
        row = {"model": name, "tool": tool}
        if tool in errors:
            rows.append({**row, "error": errors[tool]})
            continue
        candidate = runs[tool][0][0]
        wall = float(np.median([r[1] for r in runs[tool]]))
        cpu = float(np.median([r[3] for r in runs[tool]]))
        passes = None if runs[tool][0][2] is None else float(np.median([r[2] for r in runs[tool]]))
        comparison = backend.compare(original, candidate, feeds, warmup=5, iters=iters)
        row.update(
            nodes=len(candidate.graph.node), seconds=wall, cpu=cpu, passes=passes, first=firsts[tool],
            diff=max_difference(original, candidate, feeds),
            speedup=comparison.speedup, ci=(comparison.ci_low, comparison.ci_high),
            ms=(comparison.baseline.p50_ms, comparison.candidate.p50_ms),
        )
        rows.append(row)
        print(f"  {name:18s} {tool:9s} nodes {row['nodes']:4d}  {wall:6.2f} s, cpu {cpu:.2f} s (first {firsts[tool]:.2f} s)  x{comparison.speedup:.3f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | tool | nodes | tool time (s) | tool CPU time (s) | first call (s) | max output diff | ORT p50 ms (orig / tool) | ORT speedup vs original [95% CI] |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["tool"] == "original":
            lines.append(f"| {r['model']} | original | {r['nodes']} | | | | | | |")
        elif "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | failed: {r['error']} | | | | | | |")
        else:
            seconds = f"{r['seconds']:.2f}" + (f" ({r['passes']:.2f} in passes)" if r["passes"] is not None else "")
            lines.append(
                f"| {r['model']} | {r['tool']} | {r['nodes']} | {seconds} | {r['cpu']:.2f} | {r['first']:.2f} | {r['diff']:.1e} | {r['ms'][0]:.2f} / {r['ms'][1]:.2f} "
                f"| {r['speedup']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--iters", type=int, default=40, help="timed pairs per comparison")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (each tool once, in turn) after a first call per tool")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (1 keeps a shared machine's noise down)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    missing = [m for m in args.models if not (zoo_dir() / m / "meta.json").exists()]
    if missing:
        raise SystemExit(f"zoo models missing under {zoo_dir()}: {', '.join(missing)}; run python -m onnxopt.models.zoo")
    backend = OrtBackend(threads=args.threads, allow_gpu=False)
    rows = []
    for name in args.models:
        rows.extend(bench_model(name, backend, args.iters, args.repeats))
    import onnxruntime
    import onnxsim
    import onnxslim

    header = (
        f"# Fusion benchmark: onnxopt ort-fp32 vs onnxsim and onnxslim\n\n"
        f"Command: `python benchmarks/bench_fusion.py --iters {args.iters} --threads {args.threads} --repeats {args.repeats}`. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), onnxruntime {onnxruntime.__version__} CPU, "
        f"{args.threads} intra-op thread(s); onnxsim {onnxsim.__version__}, onnxslim {onnxslim.__version__}.\n\n"
        "Tool time is the median wall time of the calls after a first one, the tools called in turn round after round, "
        "inside one Python process (onnxopt: "
        "`compile(..., profile=False, verify='off')`, which includes loading, validation, checker and summaries; the "
        "passes alone in brackets); CPU time is the median CPU time of the same calls (process and children, all threads), "
        "steadier than wall time on this shared machine. First call is the first call's wall time, with one-time costs such as lazy imports "
        "(onnxopt loads sympy for ORT's symbolic shape inference the first time a model needs it). Max output diff is "
        "max |tool - original| / max |original| on the first real eval input. Speedup is the paired ORT latency "
        "ratio original/tool (alternating runs, median of per-pair ratios); > 1 means the tool's model is faster.\n\n"
    )
    text = header + table(rows) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
