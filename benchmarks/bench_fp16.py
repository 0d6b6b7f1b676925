"""ort-fp16 on real models: fidelity of the float16 model against the float32 original on held-out data.

For each model (the Fashion-MNIST example and the zoo's models, when present) it compiles the
`ort-fp16` target with the model's calibration set, then runs original and float16 model in
onnxruntime on the disjoint evaluation set and prints cosine, max relative error, top-1 agreement
and (Fashion-MNIST) labeled accuracy. It also prints the pass's own fidelity on calibration data,
from its float16 emulation. Caveat: ORT's CPU provider runs float16 nodes that lack CPU kernels in
float32, so CPU numbers are an optimistic bound of a GPU's; the emulation rounds every float16
tensor and is the closer estimate.

    python benchmarks/bench_fp16.py [--limit 64]     # writes benchmarks/results/fp16.md
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

import numpy as np

import onnxopt
from onnxopt.evaluation import cosine
from onnxopt.ir import load_model
from onnxopt.runtime import make_session, run_session

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("ONNXOPT_ZOO", Path.home() / ".cache" / "onnxopt" / "zoo"))


def cases():
    example = ROOT / "models" / "example"
    if (example / "fashion_cnn.onnx").exists():
        yield "fashion_cnn", example / "fashion_cnn.onnx", example / "calib", example / "eval.npz", example / "eval_labels.npy"
    for name in ("efficientnet_lite0", "ppocr_cls", "ppocr_rec", "minilm"):
        folder = ZOO / name
        if (folder / "model.onnx").exists():
            yield name, folder / "model.onnx", folder / "calib", folder / "eval", None


def eval_feeds(source: Path, limit: int):
    if source.is_dir():
        return [dict(np.load(f)) for f in sorted(glob.glob(str(source / "*.npz")))[:limit]]
    with np.load(source) as archive:
        arrays = {k: archive[k] for k in archive.files}
    n = min(next(iter(arrays.values())).shape[0], limit)
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=64)
    args = parser.parse_args()
    lines = [
        "## ort-fp16: fidelity of the float16 model on held-out real data",
        "",
        "| model | fp16 nodes | kept fp32 | calib cosine (emulated) | eval min cosine | eval max rel error | top-1 agreement | accuracy fp32 -> fp16 |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, path, calib, evaluation, labels in cases():
        original = load_model(path)
        result = onnxopt.compile(original, target="ort-fp16", calibration=str(calib), save=False, profile=False)
        stats = next(p.stats for p in result.report.passes if p.name == "convert-float16")
        ref, half = make_session(original), make_session(result.model)
        feeds = eval_feeds(Path(evaluation), args.limit)
        cosines, rels, agree, predictions = [], [], [], []
        for feed in feeds:
            a, b = run_session(ref, feed), run_session(half, feed)
            first = next(iter(a))
            x, y = np.asarray(a[first], np.float64), np.asarray(b[first], np.float64)
            cosines.append(cosine(x, y))
            rels.append(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)))
            agree.append(np.array_equal(x.argmax(-1), y.argmax(-1)))
            predictions.append((int(x.argmax(-1).ravel()[0]), int(y.argmax(-1).ravel()[0])))
        accuracy = ""
        if labels is not None:
            truth = np.load(labels)[: len(predictions)]
            acc32 = np.mean([p[0] == t for p, t in zip(predictions, truth)])
            acc16 = np.mean([p[1] == t for p, t in zip(predictions, truth)])
            accuracy = f"{acc32:.4f} -> {acc16:.4f}"
        kept = sum(stats["kept_float32"].values())
        lines.append(
            f"| {name} | {stats['converted_nodes']} | {kept} | {stats['fidelity']['min_cosine']:.6f} | "
            f"{min(cosines):.6f} | {max(rels):.2e} | {np.mean(agree):.4f} | {accuracy or '-'} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        f"onnxruntime CPU, {args.limit} evaluation samples per model, disjoint from the calibration set; "
        "the calibration cosine rounds every float16 tensor as a GPU would store it (ORT's CPU provider "
        "runs float16 nodes without CPU kernels in float32). `python benchmarks/bench_fp16.py`.",
        "",
    ]
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "fp16.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
