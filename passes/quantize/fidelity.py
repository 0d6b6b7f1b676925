"""How far a quantized model is from the float one, on calibration data.

The budget (`--max-drop X`) is stated in points of a fidelity metric against the float model:
cosine (100 x (1 - mean cosine of each output, per sample)) or agreement (percentage points of
top-1 agreement on the first output). In the API a user metric replaces both: a function of the
list of per-sample output dicts returning a score (higher is better, e.g. accuracy on labeled
calibration samples); the drop is score(float) - score(quantized).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import onnx

from onnxopt.errors import ConfigError
from onnxopt.evaluation import cosine
from onnxopt.runtime import make_session

Outputs = list[dict[str, np.ndarray]]
METRICS = ("cosine", "agreement")


def run_all(model: onnx.ModelProto, data: Iterable[dict], *, opt_level: str = "all", limit: int | None = None) -> Outputs:
    session = make_session(model, opt_level=opt_level)
    names = [o.name for o in session.get_outputs()]
    results = []
    for i, feeds in enumerate(data):
        if limit is not None and i >= limit:
            break
        results.append(dict(zip(names, session.run(names, feeds))))
    return results


def mean_cosine(reference: Outputs, candidate: Outputs) -> float:
    values = [cosine(r[k], c[k]) for r, c in zip(reference, candidate) for k in r if np.asarray(r[k]).dtype.kind == "f"]
    return float(np.mean(values)) if values else 1.0


def top1_agreement(reference: Outputs, candidate: Outputs) -> float:
    key = next(iter(reference[0]))
    ref = np.concatenate([np.asarray(r[key]).reshape(-1, np.asarray(r[key]).shape[-1]) for r in reference])
    cand = np.concatenate([np.asarray(c[key]).reshape(-1, np.asarray(c[key]).shape[-1]) for c in candidate])
    return float(np.mean(ref.argmax(axis=-1) == cand.argmax(axis=-1)))


def relative_error(reference: Outputs, candidate: Outputs) -> float:
    """sum ||y - y_hat||^2 / sum ||y||^2 over float outputs: a smooth sensitivity score."""
    num = den = 0.0
    for r, c in zip(reference, candidate):
        for k, v in r.items():
            v = np.asarray(v, np.float64)
            if v.dtype.kind != "f":
                continue
            num += float(np.sum((v - np.asarray(c[k], np.float64)) ** 2))
            den += float(np.sum(v * v))
    return num / den if den else num


class Fidelity:
    """The drop of a candidate against the float reference outputs, in the budget's units."""

    def __init__(self, reference: Outputs, metric: str | Callable[[Outputs], float] = "cosine"):
        if not callable(metric) and metric not in METRICS:
            raise ConfigError(f"unknown fidelity metric {metric!r}; use one of {', '.join(METRICS)} or pass a function in the API")
        self.reference = reference
        self.metric = metric
        self._reference_score = metric(reference) if callable(metric) else None

    @property
    def name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "user metric")

    def drop(self, candidate: Outputs) -> float:
        if callable(self.metric):
            return float(self._reference_score - self.metric(candidate))
        if self.metric == "agreement":
            return 100.0 * (1.0 - top1_agreement(self.reference, candidate))
        return 100.0 * (1.0 - mean_cosine(self.reference, candidate))

    def summary(self, candidate: Outputs) -> dict[str, Any]:
        out = {"drop": self.drop(candidate), "metric": self.name, "mean_cosine": mean_cosine(self.reference, candidate)}
        first = np.asarray(next(iter(self.reference[0].values())))
        if first.ndim >= 2 and first.shape[-1] > 1 and first.dtype.kind == "f":
            out["top1_agreement"] = top1_agreement(self.reference, candidate)
        return out
