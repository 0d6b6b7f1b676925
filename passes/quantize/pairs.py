"""8-bit weights that ONNX Runtime's AVX2 int8 kernels cannot saturate.

Without VNNI, ORT's u8 x s8 GEMM (MLAS, vpmaddubsw) adds the products of adjacent weights along
K, positions 2j and 2j+1, into int16 with saturation. A pair with |q_2j| + |q_2j+1| <= 128 cannot
overflow, whatever the uint8 activations (255 * 128 = 32640 < 32767). K runs as the kernel packs
it: (kh, kw, C) for convolutions (ORT reorders filters to channels-last), the rows of B for MatMul
and Gemm. Measured here: a 1x1 conv with weights [127, 127, 0, 0] on inputs of 255 saturates,
[127, 0, 127, 0] does not (tests/passes/quantize/test_pairs.py).

The older guard, 7-bit weights (|q| <= 63), halves every layer's resolution. Bounding pairs only
needs the largest pair sum to fit: per channel the scale is max(|w_2j| + |w_2j+1|) / 127, close
to 8-bit resolution where large weights do not sit side by side.
"""

from __future__ import annotations

import numpy as np

PAIR_LIMIT = 128


def kernel_order(op: str, weight_shape: tuple[int, ...]) -> np.ndarray | None:
    """Permutation p with matrix[..., p] in the kernel's K order, for a weight in rounding.matrix_view
    layout (groups, out, K); None when K is already in kernel order (MatMul, Gemm, 1x1 convs)."""
    if op != "Conv" or len(weight_shape) < 3:
        return None
    channels, spatial = int(weight_shape[1]), tuple(int(d) for d in weight_shape[2:])
    if int(np.prod(spatial)) == 1:
        return None
    k = np.arange(channels * int(np.prod(spatial))).reshape(channels, -1)
    return k.T.reshape(-1)  # (c, position) -> (position, c)


def pair_sums(matrix: np.ndarray) -> np.ndarray:
    """|w_2j| + |w_2j+1| along the last axis (kernel K order; an odd K pairs its last with zero)."""
    a = np.abs(matrix)
    if a.shape[-1] % 2:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), a.dtype)], axis=-1)
    return a[..., 0::2] + a[..., 1::2]


def pair_safe_scales(matrix: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per-row scales (groups, out) raised where needed so every pair rounds to a sum <= 128.

    With scale >= max pair sum / 127, |round(a/s)| + |round(b/s)| <= 127 + 1."""
    need = pair_sums(matrix).max(axis=-1) / (PAIR_LIMIT - 1)
    return np.maximum(scales, need.astype(scales.dtype))


def clip_pairs(q: np.ndarray, limit: int = PAIR_LIMIT) -> np.ndarray:
    """Integers (…, K) in kernel order with every pair's |sum| <= limit: the larger member gives
    up the excess (only rounding drift after GPTQ ever needs it)."""
    q = q.copy()
    k = q.shape[-1] - q.shape[-1] % 2
    a, b = q[..., 0:k:2], q[..., 1:k:2]
    excess = np.maximum(np.abs(a) + np.abs(b) - limit, 0)
    if excess.any():
        a_larger = np.abs(a) >= np.abs(b)
        a_new = np.where(a_larger, np.sign(a) * (np.abs(a) - excess), a)
        b_new = np.where(a_larger, b, np.sign(b) * (np.abs(b) - excess))
        q[..., 0:k:2], q[..., 1:k:2] = a_new, b_new
    return q
