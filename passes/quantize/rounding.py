"""Rounding weights to int8 so the layer's output, not the weight, stays close: GPTQ.

Round-to-nearest minimizes each weight's own error; what matters is the error of X W on real
inputs. GPTQ (Frantar et al. 2022, from Optimal Brain Quantization) rounds one input column at
a time and pushes the rounding error onto the columns not yet rounded, weighted by the inverse
of the inputs' Gram matrix H = X^T X, which is the closed-form least-squares correction. It
needs only calibration inputs, no training; scales stay the per-channel ones chosen before.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack


def matrix_view(weight: np.ndarray, op: str, groups: int, transposed: bool) -> np.ndarray:
    """A weight as (groups, out per group, K): the rows GPTQ rounds."""
    if op == "Conv":
        out = weight.shape[0]
        return weight.reshape(groups, out // groups, -1)
    w2 = weight.T if transposed else weight
    return w2.reshape(1, w2.shape[0], w2.shape[1])


def from_matrix_view(matrix: np.ndarray, shape: tuple[int, ...], op: str, transposed: bool) -> np.ndarray:
    if op == "Conv":
        return matrix.reshape(shape)
    w2 = matrix.reshape(matrix.shape[1], matrix.shape[2])
    return w2.T if transposed else w2


def gptq(weight: np.ndarray, scales: np.ndarray, hessian: np.ndarray, *, qmax: int = 127, damp: float = 0.01, block: int = 32,
         pair_limit: int | None = None) -> np.ndarray:
    """Integer weights (groups, out, K) minimizing ||X (W - s q)||^2 column by column.

    With `pair_limit`, columns 2j and 2j+1 keep |q_2j| + |q_2j+1| <= pair_limit (pairs.py: ORT's
    AVX2 kernels), the second of a pair clipped to what the first left; its error is pushed on like
    any rounding error.

    `weight` is (groups, out, K), `scales` (groups, out), `hessian` (groups, K, K) = sum X^T X.
    Columns are rounded in blocks of `block` with one matrix product per block for the rest (the
    lazy batch update: same integers for any block; 32 measured fastest on MiniLM's 384 and
    1536 columns, 2x faster than 128).
    """
    w = weight.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    groups, out, k = w.shape
    s = scales.astype(np.float64)[..., None]
    diag = np.einsum("gkk->gk", h)
    dead = diag <= 0
    if dead.any():  # an input the calibration data never excites: rounded to nearest, no error pushed through it
        gi, ki = np.nonzero(dead)
        h[gi, ki, ki] = 1.0
    mean_diag = np.einsum("gkk->gk", h).mean(axis=1)
    h += (damp * mean_diag)[:, None, None] * np.eye(k)[None]
    try:
        hinv = np.stack([_inverse_upper_factor(hg) for hg in h])
    except np.linalg.LinAlgError:
        return np.clip(np.round(w / s), -qmax, qmax)
    q = np.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, :, i1:i2].copy()
        err1 = np.zeros_like(w1)
        h1 = hinv[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i]
            bound = qmax
            if pair_limit is not None and (i1 + i) % 2:
                bound = np.minimum(qmax, pair_limit - np.abs(q[:, :, i1 + i - 1]))
            qcol = np.clip(np.round(col / s[..., 0]), -bound, bound)
            q[:, :, i1 + i] = qcol
            d = h1[:, i, i][:, None]
            err = (col - qcol * s[..., 0]) / d
            w1[:, :, i:] -= err[:, :, None] * h1[:, i, i:][:, None, :]
            err1[:, :, i] = err
        if i2 < k:
            w[:, :, i2:] -= np.matmul(err1, hinv[:, i1:i2, i2:])
    return q


def _inverse_upper_factor(h: np.ndarray) -> np.ndarray:
    """The upper triangular U with H^-1 = U^T U, without forming H^-1.

    With J the order reversal and J H J = L L^T, U = J L^-1 J: one Cholesky and one triangular
    inverse, about a third of the work of inverting H and factoring the inverse.
    """
    lower = np.linalg.cholesky(h[::-1, ::-1])
    inverse, info = lapack.dtrtri(lower, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError("singular Cholesky factor")
    return inverse[::-1, ::-1]
