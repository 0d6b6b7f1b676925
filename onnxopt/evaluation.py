"""Comparing a model's outputs with the original's: exactness for exact passes, fidelity for lossy ones."""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_float(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def output_difference(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per output: max absolute error, the same relative to the reference's largest magnitude, cosine."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf outputs are compared, not warned about
        return _output_difference(reference, candidate)


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
        ok = d["max_abs"] <= atol or d["max_rel"] <= rtol
        if not ok and (worst is None or d["max_rel"] > worst["max_rel"]):
            worst_name, worst = name, d
    if worst is None:
        return True, ""
    return False, f"output {worst_name} differs by {worst['max_abs']:.3g} ({worst['max_rel']:.3g} relative)"
