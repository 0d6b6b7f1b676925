"""Comparing a model's outputs with the original's: exactness for exact passes, fidelity for lossy ones."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from onnxopt.calibration import fingerprint, fingerprints, open_calibration
from onnxopt.errors import CalibrationError, ConfigError
from onnxopt.ir import load_model
from onnxopt.runtime import make_session, run_session


def _as_float(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def output_difference(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per output: max absolute error, the same relative to the reference's largest magnitude, cosine."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf outputs are compared, not warned about
        return _output_difference(_items(reference), _items(candidate))


def _items(outputs: dict[str, Any]) -> dict[str, Any]:
    """Sequence outputs (lists of tensors) as one entry per item plus their length, so they compare
    like tensors; an absent optional (None) compares equal only to another None."""
    if not any(isinstance(v, list) for v in outputs.values()):
        return outputs
    flat: dict[str, Any] = {}
    for name, value in outputs.items():
        if isinstance(value, list):
            flat[f"{name} (length)"] = np.array(len(value))
            flat.update({f"{name}[{i}]": item for i, item in enumerate(value)})
        else:
            flat[name] = value
    return flat


def _output_difference(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, dict[str, float]]:
    result = {}
    for name, ref in reference.items():
        if name not in candidate:
            result[name] = {"missing": 1.0}
            continue
        ref_arr, cand_arr = np.asarray(ref), np.asarray(candidate[name])
        if ref_arr.shape != cand_arr.shape:
            result[name] = {"shape_mismatch": 1.0}
            continue
        if ref_arr.dtype.kind not in "fc" or cand_arr.dtype.kind not in "fc":
            mismatches = float(np.count_nonzero(ref_arr != cand_arr))
            result[name] = {"max_abs": mismatches, "max_rel": mismatches, "cosine": 1.0 if mismatches == 0 else 0.0}
            continue
        r, c = _as_float(ref_arr), _as_float(cand_arr)
        both_nan = np.isnan(r) & np.isnan(c)
        both_inf = np.isinf(r) & np.isinf(c) & (np.sign(r) == np.sign(c))
        same = both_nan | both_inf
        diff = np.where(same, 0.0, np.abs(r - c))
        diff = np.where(np.isnan(diff), np.inf, diff)
        finite = np.abs(np.where(np.isfinite(r), r, 0.0))
        scale = float(finite.max()) if finite.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        result[name] = {
            "max_abs": max_abs,
            "max_rel": max_abs / scale if scale > 0 else max_abs,
            "cosine": cosine(r, c),
        }
        if ref_arr.dtype.itemsize <= 2:  # float16 / bfloat16 outputs: one ulp is 1e-3 relative
            result[name]["ulp_rel"] = float(np.finfo(np.float16).eps)
    return result


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _as_float(a).ravel(), _as_float(b).ravel()
    mask = np.isfinite(a) & np.isfinite(b)
    a, b = a[mask], b[mask]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def outputs_match(diff: dict[str, dict[str, float]], rtol: float, atol: float) -> tuple[bool, str]:
    """Exactness: every output within atol + rtol * scale. Returns (ok, the worst output's description)."""
    worst_name, worst = None, None
    for name, d in diff.items():
        if "missing" in d or "shape_mismatch" in d:
            return False, f"output {name} is {'missing' if 'missing' in d else 'of another shape'}"
        # a half-precision output cannot be closer than its own rounding: two ulps of it are float tolerance
        ok = d["max_abs"] <= atol or d["max_rel"] <= max(rtol, 2 * d.get("ulp_rel", 0.0))
        if not ok and (worst is None or d["max_rel"] > worst["max_rel"]):
            worst_name, worst = name, d
    if worst is None:
        return True, ""
    return False, f"output {worst_name} differs by {worst['max_abs']:.3g} ({worst['max_rel']:.3g} relative)"


# --- Fidelity and accuracy on real data -------------------------------------------------------
#
# `evaluate` runs the original and the optimized model side by side on the same samples and
# streams per-output statistics, so a large evaluation set never has to sit in memory (outputs are
# kept only when a user metric needs them).


def _abs_error(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """|r - c|, with matching NaNs/infinities counted as equal and any other NaN as infinite error."""
    same = (np.isnan(r) & np.isnan(c)) | (np.isinf(r) & np.isinf(c) & (np.sign(r) == np.sign(c)))
    diff = np.where(same, 0.0, np.abs(r - c))
    return np.where(np.isnan(diff), np.inf, diff)


def is_classifier_like(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """A float output of shape [batch, classes] with at least two classes: argmax means a prediction."""
    return np.dtype(dtype).kind == "f" and len(shape) == 2 and shape[1] >= 2


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


class _OutputStats:
    """Streaming statistics of one output over all samples."""

    def __init__(self, name: str):
        self.name = name
        self.float = True
        self.samples = 0
        self.cosines: list[float] = []
        self.dot = self.norm_a = self.norm_b = 0.0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.elements = 0
        self.equal = 0
        self.classes = 0
        self.rows = 0
        self.top1 = 0
        self.top5 = 0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        self.samples += 1
        self.elements += ref.size
        if ref.dtype.kind not in "fc" or cand.dtype.kind not in "fc":
            self.float = False
            self.equal += int(np.count_nonzero(ref == cand))
            return
        r, c = _as_float(ref), _as_float(cand)
        err = _abs_error(r, c)
        if err.size:
            self.max_abs = max(self.max_abs, float(err.max()))
            self.sum_abs += float(err.sum())
        self.cosines.append(cosine(r, c))
        finite = np.isfinite(r) & np.isfinite(c)
        self.dot += float(np.dot(r[finite], c[finite]))
        self.norm_a += float(np.dot(r[finite], r[finite]))
        self.norm_b += float(np.dot(c[finite], c[finite]))
        if is_classifier_like(ref.shape, ref.dtype):
            self.classes = ref.shape[1]
            self.rows += ref.shape[0]
            ref_top1 = np.argmax(r, axis=1)
            self.top1 += int(np.count_nonzero(ref_top1 == np.argmax(c, axis=1)))
            self.top5 += int(np.count_nonzero((_topk(c, 5) == ref_top1[:, None]).any(axis=1)))

    def to_dict(self) -> dict[str, Any]:
        if not self.float:
            return {"kind": "exact-match", "samples": self.samples, "equal": self.equal / max(self.elements, 1)}
        if self.norm_a == 0 and self.norm_b == 0:
            global_cosine = 1.0
        elif self.norm_a == 0 or self.norm_b == 0:
            global_cosine = 0.0
        else:
            global_cosine = self.dot / np.sqrt(self.norm_a * self.norm_b)
        data = {
            "kind": "classifier" if self.classes else "tensor",
            "samples": self.samples,
            "cosine": float(np.mean(self.cosines)) if self.cosines else 1.0,
            "cosine_min": float(np.min(self.cosines)) if self.cosines else 1.0,
            "cosine_global": float(global_cosine),
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / max(self.elements, 1),
        }
        if self.classes:
            data["classes"] = self.classes
            data["top1_agreement"] = self.top1 / max(self.rows, 1)
            data["top5_agreement"] = self.top5 / max(self.rows, 1) if self.classes > 5 else None
        return data


@dataclass
class EvaluationResult:
    """Fidelity per output, labeled accuracy of both models, and the user metric of both models.

    - `cosine` is the mean over samples of the per-sample cosine similarity (`cosine_min` the worst
      sample, `cosine_global` one cosine over the whole set); `max_abs`/`mean_abs` are over every
      element.
    - For classifier-like outputs ([batch, classes]): `top1_agreement` is the share of rows whose
      argmax is unchanged; `top5_agreement` the share where the original's top class is still in
      the optimized model's top 5 (top-5 accuracy with the original as the label).
    - `accuracy` (with labels): top-1/top-5 of both models and the drop in percentage points.
    """

    samples: int
    outputs: dict[str, dict[str, Any]]
    accuracy: dict[str, Any] | None = None
    metric: dict[str, Any] | None = None
    source: str = ""
    calibration_overlap: int | None = None  # evaluated samples that are also calibration samples (None: not checked)

    @property
    def fidelity(self) -> float:
        """The worst float output's mean cosine similarity: one number for a --min-fidelity floor."""
        cosines = [d["cosine"] for d in self.outputs.values() if "cosine" in d]
        return min(cosines) if cosines else 1.0

    @property
    def classifier_output(self) -> str | None:
        if self.accuracy:
            return self.accuracy["output"]
        return next((name for name, d in self.outputs.items() if d.get("kind") == "classifier"), None)

    @property
    def top1_agreement(self) -> float | None:
        name = self.classifier_output
        return self.outputs[name]["top1_agreement"] if name else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.samples,
            "fidelity": self.fidelity,
            "outputs": self.outputs,
            "accuracy": self.accuracy,
            "metric": self.metric,
            "calibration_overlap": self.calibration_overlap,
        }

    def summary(self) -> str:
        lines = [f"evaluated on {self.samples} samples{f' from {self.source}' if self.source else ''}"]
        for name, d in self.outputs.items():
            if d["kind"] == "exact-match":
                lines.append(f"  {name:<20} equal elements {d['equal'] * 100:.2f}%")
                continue
            line = f"  {name:<20} cosine {d['cosine']:.6f} (worst {d['cosine_min']:.6f}) · max abs {d['max_abs']:.3g} · mean abs {d['mean_abs']:.3g}"
            if d["kind"] == "classifier":
                line += f" · top-1 agreement {d['top1_agreement'] * 100:.2f}%"
                if d.get("top5_agreement") is not None:
                    line += f" · top-5 {d['top5_agreement'] * 100:.2f}%"
            lines.append(line)
        if self.accuracy:
            a = self.accuracy
            lines.append(
                f"accuracy ({a['output']}, {a['labels']} labels): top-1 {a['original']['top1'] * 100:.2f}% -> {a['optimized']['top1'] * 100:.2f}% "
                f"({abs(a['drop_top1_pts']):.2f} pts {'lost' if a['drop_top1_pts'] > 0 else 'gained'})"
                + (
                    f" · top-5 {a['original']['top5'] * 100:.2f}% -> {a['optimized']['top5'] * 100:.2f}% (drop {a['drop_top5_pts']:+.2f} pts)"
                    if a["original"].get("top5") is not None
                    else ""
                )
            )
        if self.metric:
            for key, m in self.metric["values"].items():
                lines.append(f"metric {key}: {m['original']:.6g} -> {m['optimized']:.6g} (change {m['change']:+.6g})")
        return "\n".join(lines)


def load_labels(labels: Any) -> np.ndarray:
    """Class ids, one per sample: a .npy path or an array; never unpickled."""
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise CalibrationError(f"labels {path}: no such file (give a .npy of int class ids, one per sample)")
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CalibrationError(f"labels {path}: not a readable .npy array ({exc})") from None
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise CalibrationError(f"labels must be a 1-D array of integer class ids, got dtype {array.dtype} shape {array.shape}")
    return array.astype(np.int64)


def _accuracy(top5_rows: list[np.ndarray], labels: np.ndarray, classes: int) -> dict[str, float | None]:
    top = np.concatenate(top5_rows, axis=0) if top5_rows else np.empty((0, 1), np.int64)
    return {
        "top1": float(np.mean(top[:, 0] == labels)) if len(labels) else 0.0,
        "top5": float(np.mean((top == labels[:, None]).any(axis=1))) if classes > 5 and len(labels) else None,
    }


def _stack(chunks: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    try:
        return np.concatenate(chunks, axis=0)
    except ValueError:
        return chunks


def _metric_values(value: Any, name: str) -> dict[str, float]:
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    return {name: float(value)}


def evaluate(
    original: Any,
    optimized: Any,
    data: Any,
    labels: Any = None,
    metric: Callable[[dict[str, Any], np.ndarray | None], Any] | None = None,
    *,
    output: str | None = None,
    limit: int | None = None,
    input_shapes: dict | None = None,
    opt_level: str = "all",
    calibration: Any = None,
) -> EvaluationResult:
    """Fidelity of `optimized` against `original` on real `data`, labeled accuracy, and a user metric.

    `original`/`optimized` are paths or ModelProtos; `data` anything `open_calibration` reads (a
    folder of .npz/.npy, one stacked .npz, a reader, a list of feed dicts). `labels` (a .npy path or
    an array of int class ids, one per row of the classifier output) adds top-1/top-5 accuracy of
    both models. `metric(outputs, labels)` receives every output of one model over the whole set
    (arrays stacked on axis 0, or lists when sample shapes differ) and returns a number or a dict
    of numbers; it is called for both models and the change is reported. `calibration` (the
    samples the lossy passes were fitted on) counts the evaluated samples among them.
    """
    original_model = load_model(original)
    optimized_model = load_model(optimized)
    names = [o.name for o in original_model.graph.output]
    missing = sorted(set(names) - {o.name for o in optimized_model.graph.output})
    if missing:
        raise ConfigError(f"the optimized model lacks output(s) {', '.join(missing)} of the original; compare a model with its own optimized version")
    if output is not None and output not in names:
        raise ConfigError(f"unknown output {output!r}; the model's outputs are {', '.join(names)}")
    label_ids = load_labels(labels) if labels is not None else None
    samples = open_calibration(data, original_model, limit=limit, input_shapes=input_shapes)
    base_session = make_session(original_model, opt_level=opt_level)
    cand_session = make_session(optimized_model, opt_level=opt_level)

    stats = {name: _OutputStats(name) for name in names}
    top5 = {"original": [], "optimized": []}
    kept: dict[str, dict[str, list]] = {"original": {n: [] for n in names}, "optimized": {n: [] for n in names}}
    label_output = output
    count = 0
    fitted = fingerprints(open_calibration(calibration, original_model, input_shapes=input_shapes)) if calibration is not None else None
    overlap = 0
    for feeds in samples:
        ref = run_session(base_session, feeds, names)
        cand = run_session(cand_session, feeds, names)
        count += 1
        overlap += fitted is not None and fingerprint(feeds) in fitted
        for name in names:
            r, c = np.asarray(ref[name]), np.asarray(cand[name])
            if r.shape != c.shape:
                raise ConfigError(f"output {name} has shape {c.shape} in the optimized model but {r.shape} in the original on sample {count}")
            stats[name].add(r, c)
            if metric is not None:
                kept["original"][name].append(r)
                kept["optimized"][name].append(c)
        if label_ids is not None:
            if label_output is None:
                label_output = next((n for n in names if is_classifier_like(np.shape(ref[n]), np.asarray(ref[n]).dtype)), None)
                if label_output is None:
                    raise ConfigError(f"labels need a classifier output of shape [batch, classes]; the outputs are {', '.join(names)} (choose one with --output)")
            r = np.asarray(ref[label_output])
            if not is_classifier_like(r.shape, r.dtype):
                raise ConfigError(f"output {label_output} has shape {r.shape}; labels need [batch, classes] scores")
            top5["original"].append(_topk(_as_float(r), 5))
            top5["optimized"].append(_topk(_as_float(np.asarray(cand[label_output])), 5))
    if count == 0:
        raise CalibrationError(f"evaluation data {getattr(samples, 'description', '')} holds no samples")

    accuracy = None
    if label_ids is not None:
        rows = sum(len(t) for t in top5["original"])
        if rows != len(label_ids):
            raise CalibrationError(f"{len(label_ids)} labels for {rows} evaluated rows of {label_output}; give one class id per sample")
        classes = stats[label_output].classes
        before = _accuracy(top5["original"], label_ids, classes)
        after = _accuracy(top5["optimized"], label_ids, classes)
        accuracy = {
            "output": label_output,
            "labels": int(len(label_ids)),
            "original": before,
            "optimized": after,
            "drop_top1_pts": (before["top1"] - after["top1"]) * 100,
            "drop_top5_pts": (before["top5"] - after["top5"]) * 100 if before["top5"] is not None else None,
        }

    metric_result = None
    if metric is not None:
        name = getattr(metric, "__name__", "metric")
        stacked = {side: {n: _stack(chunks) for n, chunks in outs.items()} for side, outs in kept.items()}
        before = _metric_values(metric(stacked["original"], label_ids), name)
        after = _metric_values(metric(stacked["optimized"], label_ids), name)
        metric_result = {
            "name": name,
            "values": {k: {"original": before[k], "optimized": after.get(k, float("nan")), "change": after.get(k, float("nan")) - before[k]} for k in before},
        }

    return EvaluationResult(
        samples=count,
        outputs={name: s.to_dict() for name, s in stats.items()},
        accuracy=accuracy,
        metric=metric_result,
        source=str(getattr(samples, "description", "")),
        calibration_overlap=overlap if fitted is not None else None,
    )


def overlap_warning(overlap: int, samples: int, kind: str = "evaluation") -> str:
    """Why fidelity on calibration samples misleads: refits fit them (issue 17 measured a pruned
    MiniLM at cosine 0.955 on its calibration samples and 0.890 on held-out sentences)."""
    return (
        f"{overlap} of the {samples} {kind} samples are also calibration samples; the lossy passes "
        "were fitted on those, so the fidelity and accuracy measured on them are optimistic: evaluate on data disjoint from --calib"
    )
