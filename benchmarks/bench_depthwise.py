"""Depthwise-separable substitution benchmark: MACs, parameters, accuracy on real data, paired ORT latency.

    python benchmarks/bench_depthwise.py                       # every section
    python benchmarks/bench_depthwise.py --sections fashion    # resnet, fashion, compose

Sections:
- resnet: the ResNet-18 layout (random weights: no accuracy claimed) with --depthwise-flops 0.5,
  no calibration; MACs of the KxK convs before and after, per-layer multipliers, latency ratio.
- fashion: the example Fashion-MNIST CNN at 1.5x and 2x fewer MACs, depthwise form alone and with
  the spatially separable option, with and without reconstruction. Calibration: models/example/calib;
  accuracy on eval.npz (500 test images) and the full 10k test set when installed.
- compose: depthwise substitution then channel pruning in one recipe on the Fashion-MNIST CNN.

Results go to benchmarks/results/depthwise.json (merged across runs) and depthwise.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_prune import EXAMPLE, accuracy, fashion_test_set, latency_ratio, run_sections  # noqa: E402

import onnxopt  # noqa: E402


def compile_with(model, passes, calibration=None):
    start = time.perf_counter()
    result = onnxopt.compile(model, target="ort-fp32", calibration=calibration, extra_passes=passes, save=False, profile=False, verify="off")
    onnx.checker.check_model(result.model)
    return result.model, result.report.artifacts, time.perf_counter() - start


def section_resnet(iters: int) -> list[dict]:
    from onnxopt.models import builders

    model = builders.resnet18_shaped()
    pruned, arts, seconds = compile_with(model, [{"name": "depthwise-separable", "flops_target": 0.5}])
    report = arts["depthwise-separable"]
    kxk_before = sum(layer["macs_before"] for layer in report["layers"])
    kxk_after = sum(layer["macs_after"] for layer in report["layers"])
    three = [layer for layer in report["layers"] if layer["layer"] != "stem.conv"]
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    row = {
        "model": "resnet18_shaped", "flops_target": 0.5, "macs_before": report["macs_before"], "macs_after": report["macs_after"],
        "params_before": report["params_before"], "params_after": report["params_after"], "substituted": report["substituted"],
        "kxk_macs_before": kxk_before, "kxk_macs_after": kxk_after,
        "three_by_three_cut": round(sum(layer["macs_before"] for layer in three) / max(sum(layer["macs_after"] for layer in three), 1), 3),
        "multipliers": {layer["layer"]: layer["rank"] for layer in report["layers"]},
        "latency": latency_ratio(model, pruned, feeds, iters), "compile_s": round(seconds, 1),
    }
    print(json.dumps(row), flush=True)
    return [row]


def section_fashion(iters: int) -> list[dict]:
    model = onnx.load(EXAMPLE / "fashion_cnn.onnx")
    x_eval, y_eval = np.load(EXAMPLE / "eval.npz")["input"], np.load(EXAMPLE / "eval_labels.npy")
    full = fashion_test_set()
    base = {"acc_eval500": accuracy(model, x_eval, y_eval)}
    if full:
        base["acc_test10k"] = accuracy(model, *full)
    rows = [{"variant": "original", **{k: round(v, 4) for k, v in base.items()}}]
    print(json.dumps(rows[0]), flush=True)
    for target in (0.66, 0.5):
        for spatial in (False, True):
            for reconstruct in (False, True):
                entry = {"name": "depthwise-separable", "flops_target": target, "spatial": spatial, "reconstruct": reconstruct}
                out, arts, seconds = compile_with(model, [entry], str(EXAMPLE / "calib"))
                report = arts["depthwise-separable"]
                row = {
                    "variant": f"flops {target}{' +spatial' if spatial else ''}{' +reconstruction' if reconstruct else ''}",
                    "flops_target": target, "spatial": spatial, "reconstruct": reconstruct,
                    "macs_before": report["macs_before"], "macs_after": report["macs_after"],
                    "macs_cut": round(report["macs_before"] / report["macs_after"], 3),
                    "params_before": report["params_before"], "params_after": report["params_after"],
                    "layers": [(layer["layer"], layer["form"], layer["rank"], layer["error"], layer.get("error_refit")) for layer in report["layers"]],
                    "acc_eval500": round(accuracy(out, x_eval, y_eval), 4),
                }
                row["drop_eval500_pts"] = round(100 * (base["acc_eval500"] - row["acc_eval500"]), 2)
                if full:
                    row["acc_test10k"] = round(accuracy(out, *full), 4)
                    row["drop_test10k_pts"] = round(100 * (base["acc_test10k"] - row["acc_test10k"]), 2)
                if reconstruct:
                    row["latency"] = latency_ratio(model, out, {"input": x_eval[:1]}, iters * 4)
                    row["latency_batch64"] = latency_ratio(model, out, {"input": x_eval[:64]}, iters)
                row["compile_s"] = round(seconds, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def section_compose(iters: int) -> list[dict]:
    model = onnx.load(EXAMPLE / "fashion_cnn.onnx")
    x_eval, y_eval = np.load(EXAMPLE / "eval.npz")["input"], np.load(EXAMPLE / "eval_labels.npy")
    full = fashion_test_set()
    passes = [{"name": "depthwise-separable", "flops_target": 0.66}, {"name": "channel-prune", "ratio": 0.25}]
    out, arts, seconds = compile_with(model, passes, str(EXAMPLE / "calib"))
    row = {
        "recipe": "depthwise-separable (flops 0.66) then channel-prune (ratio 0.25)",
        "macs_original": arts["depthwise-separable"]["macs_before"], "macs_after_depthwise": arts["depthwise-separable"]["macs_after"],
        "macs_after_prune": arts["channel-prune"]["macs_after"], "params_after": arts["channel-prune"]["params_after"],
        "acc_eval500": round(accuracy(out, x_eval, y_eval), 4), "acc_eval500_original": round(accuracy(model, x_eval, y_eval), 4),
    }
    if full:
        row["acc_test10k"] = round(accuracy(out, *full), 4)
        row["acc_test10k_original"] = round(accuracy(model, *full), 4)
    row["latency_batch64"] = latency_ratio(model, out, {"input": x_eval[:64]}, iters)
    row["compile_s"] = round(seconds, 1)
    print(json.dumps(row), flush=True)
    return [row]


def render(results: dict) -> str:
    lines = ["# Depthwise-separable substitution benchmark", "", f"Generated by `python benchmarks/bench_depthwise.py` on {results.get('machine', '?')}.", ""]
    lines += ["Latency: paired ORT CPU runs (alternating, spinning off), speedup = median of original/substituted per pair, 95% bootstrap CI.", ""]
    if "resnet" in results:
        r = results["resnet"][0]
        lat = r["latency"]
        lines += ["## ResNet-18 layout, `--depthwise-flops 0.5` (random weights, no calibration)", ""]
        lines += ["| MACs before → after | KxK conv MACs before → after | 3x3 convs cut | params before → after | layers substituted | ORT speedup (95% CI) |", "|---|---|---|---|---|---|"]
        lines.append(f"| {r['macs_before'] / 1e9:.3f}G → {r['macs_after'] / 1e9:.3f}G | {r['kxk_macs_before'] / 1e9:.3f}G → {r['kxk_macs_after'] / 1e9:.3f}G | {r['three_by_three_cut']:.2f}x | {r['params_before'] / 1e6:.2f}M → {r['params_after'] / 1e6:.2f}M | {r['substituted']} | {lat['speedup']:.2f}x ({lat['ci95'][0]:.2f}–{lat['ci95'][1]:.2f}) |")
        lines += ["", "Multipliers m per layer: " + ", ".join(f"{k} {v}" for k, v in r["multipliers"].items()), ""]
        lines += ["The 3x3 convs' MACs fall more than 2x, but ORT's CPU latency does not follow: its dense 3x3 convs run in the",
                  "blocked NCHWc layout near peak, while depthwise convs are memory-bound and the pointwise convs read m times",
                  "more channels. (Multiplier-m depthwise convs are emitted as m multiplier-1 convs and a Concat, which ORT runs",
                  "about 2x faster than one conv with multiplier m; see `split_multiplier`.)", ""]
    if "fashion" in results:
        rows = results["fashion"]
        base = rows[0]
        lines += ["## Fashion-MNIST CNN", "", f"Calibration: models/example/calib (64 train images). Original accuracy {base['acc_eval500']:.4f} on eval.npz (500 test images)"
                  + (f", {base['acc_test10k']:.4f} on the full 10k test set." if "acc_test10k" in base else "."), ""]
        lines += ["| MACs target | spatial option | reconstruction | MACs cut | params | per layer (form, m or R, error before → after refit) | acc eval500 (drop) | acc test10k (drop) | ORT speedup batch 1 / 64 |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows[1:]:
            layers = "; ".join(f"{name} {form} {rank} ({err}" + (f" → {refit})" if refit is not None else ")") for name, form, rank, err, refit in r["layers"])
            test = f"{r['acc_test10k']:.4f} ({r['drop_test10k_pts']:+.2f})" if "acc_test10k" in r else "–"
            lat = f"{r['latency']['speedup']:.2f}x / {r['latency_batch64']['speedup']:.2f}x" if "latency" in r else ""
            lines.append(f"| {r['flops_target']} | {'yes' if r['spatial'] else 'no'} | {'yes' if r['reconstruct'] else 'no'} | {r['macs_cut']:.2f}x | {r['params_before'] / 1e3:.1f}k → {r['params_after'] / 1e3:.1f}k | {layers} | {r['acc_eval500']:.4f} ({r['drop_eval500_pts']:+.2f}) | {test} | {lat} |")
        lines += ["", "Drops are in accuracy points (original minus substituted; positive = worse). Errors are relative output errors of the layer on calibration data.", ""]
    if "compose" in results:
        r = results["compose"][0]
        lines += ["## Composition in one recipe (Fashion-MNIST CNN)", "", f"{r['recipe']}: MACs {r['macs_original'] / 1e6:.2f}M → {r['macs_after_depthwise'] / 1e6:.2f}M → {r['macs_after_prune'] / 1e6:.2f}M; "
                  f"accuracy eval500 {r['acc_eval500_original']:.4f} → {r['acc_eval500']:.4f}"
                  + (f", test10k {r['acc_test10k_original']:.4f} → {r['acc_test10k']:.4f}" if "acc_test10k" in r else "")
                  + f"; ORT speedup at batch 64 {r['latency_batch64']['speedup']:.2f}x.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    sections = {"resnet": section_resnet, "fashion": section_fashion, "compose": section_compose}
    run_sections("depthwise", sections, render, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
