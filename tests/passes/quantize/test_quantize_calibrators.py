"""Calibrators against hand-computed ranges; the streaming histogram against numpy's."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.errors import ConfigError
from onnxopt.passes.quantize.calibrators import (
    Range,
    activation_range,
    entropy_range,
    kl_threshold,
    minmax_range,
    mse_range,
    percentile_range,
    quantize_weight,
    weight_scales,
)
from onnxopt.passes.quantize.histogram import StreamingHistogram


def hist_of(*chunks, bins=4096):
    h = StreamingHistogram(bins)
    for chunk in chunks:
        h.update(np.asarray(chunk, np.float32))
    return h


def test_histogram_growth_is_exact():
    r = np.random.default_rng(0)
    a, b = r.uniform(-1, 1, 5000), r.uniform(-3, 3, 5000)
    h = hist_of(a, b, bins=64)
    assert h.radius == pytest.approx(4 * np.abs(a).max())  # doubled twice to cover |b| <= 3
    expected, _ = np.histogram(np.concatenate([a, b]).astype(np.float32), bins=h.edges)
    assert h.total == 10000 and h.counts.sum() == 10000
    assert np.abs(h.counts - expected).sum() <= 4  # only values on a bin edge may land one bin over
    assert (h.min, h.max) == (pytest.approx(min(a.min(), b.min())), pytest.approx(max(a.max(), b.max())))


def test_minmax_is_the_observed_range_and_always_contains_zero():
    h = hist_of([-2.0, 0.5, 5.0])
    assert minmax_range(h) == Range(-2.0, 5.0)
    assert minmax_range(h, symmetric=True) == Range(-5.0, 5.0)
    positive = hist_of([1.0, 3.0])
    assert minmax_range(positive) == Range(0.0, 3.0)


def test_percentile_of_uniform_values():
    values = np.arange(10000) / 10000.0  # 0 .. 0.9999
    h = hist_of(values)
    rng = percentile_range(h, 99.0)
    assert rng.lo == 0.0
    assert rng.hi == pytest.approx(0.99, abs=2 * h.bin_width)
    sym = percentile_range(hist_of(np.concatenate([values, -values])), 99.0, symmetric=True)
    assert sym.hi == pytest.approx(0.99, abs=2 * h.bin_width) and sym.lo == -sym.hi
    with pytest.raises(ConfigError):
        percentile_range(h, 20.0)


def _naive_kl_threshold(counts, levels):
    """TensorRT's entropy calibration written out with loops, as in NVIDIA's pytorch-quantization."""
    counts = np.asarray(counts, float).copy()
    counts[0] = counts[1]
    best, best_i = np.inf, None
    for i in range(levels, len(counts) + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        digitized = np.digitize(range(i), np.linspace(0, i, levels + 1)) - 1  # quant bin of each bin
        digitized[counts[:i] == 0] = -1
        q = np.zeros(i)
        for j in range(levels):
            members = digitized == j
            if members.any():
                q[members] = counts[:i][members].sum() / members.sum()
        p, q = p / p.sum(), q / q.sum()
        kl = sum(pi * np.log(pi / max(qi, 1e-12)) for pi, qi in zip(p, q) if pi > 0)
        if kl <= best:
            best, best_i = kl, i
    return best_i


def test_entropy_matches_a_hand_written_reference():
    counts = np.array([50, 40, 30, 22, 15, 9, 6, 3, 2, 1, 0, 1, 0, 0, 0, 1], float)
    assert kl_threshold(counts, width=1.0, levels=4) == _naive_kl_threshold(counts, 4)


def test_entropy_clips_long_tails_but_not_relu_spikes():
    r = np.random.default_rng(0)
    laplace = r.laplace(size=1000000)
    rng = entropy_range(hist_of(laplace), symmetric=True)
    assert 6.0 <= rng.hi <= 0.8 * np.abs(laplace).max()  # the rare tail beyond ~10 scale units is clipped
    relu6 = np.concatenate([np.zeros(70000), r.uniform(0, 6, 30000)])
    assert entropy_range(hist_of(relu6)).hi > 5.0  # a spike of exact zeros must not drag the cut down


def test_mse_keeps_uniform_data_whole_and_clips_gaussian_tails_at_the_known_optimum():
    r = np.random.default_rng(0)
    uniform = mse_range(hist_of(r.uniform(-1, 1, 200000)), symmetric=True)
    assert 0.97 <= uniform.hi <= 1.0
    gaussian = r.standard_normal(1000000)
    rng = mse_range(hist_of(gaussian), symmetric=True)
    # ~4 sigma is the known MSE-optimal 8-bit clip of a Gaussian (Banner et al., ACIQ); max |x| is ~5
    assert 3.3 <= rng.hi <= 4.6 < np.abs(gaussian).max()


def test_every_calibrator_by_name():
    h = hist_of(np.linspace(-1, 3, 1001))
    for method in ("minmax", "percentile", "entropy", "mse"):
        rng = activation_range(h, method, symmetric=False)
        assert rng.lo <= 0.0 < rng.hi <= 3.0 + 1e-6
    with pytest.raises(ConfigError, match="unknown calibrator"):
        activation_range(h, "magic", symmetric=False)


def test_weight_scales_per_output_channel():
    w = np.array([[1.0, -2.0, 0.5], [0.1, 0.2, -0.3]], np.float32)
    np.testing.assert_allclose(weight_scales(w, 0), [2.0 / 127, 0.3 / 127], rtol=1e-6)
    np.testing.assert_allclose(weight_scales(w, 1), [1.0 / 127, 2.0 / 127, 0.5 / 127], rtol=1e-6)
    assert weight_scales(w, None).shape == (1,)
    q = quantize_weight(w, weight_scales(w, 0), 0)
    assert q.dtype == np.int8 and q[0, 1] == -127 and q[1, 2] == -127
    np.testing.assert_allclose(q * weight_scales(w, 0)[:, None], w, atol=2.0 / 127 / 2 + 1e-7)
    mse = weight_scales(np.concatenate([w, [[10.0, 0.01, 0.02]]]), 0, "mse")
    assert mse[2] <= 10.0 / 127  # the mse choice never widens the range


def test_mse_weight_scales_are_the_grid_minimizers_of_the_rounding_error():
    w = np.random.default_rng(3).standard_normal((24, 40)).astype(np.float32)
    flat = w.astype(np.float64)
    bound = np.abs(flat).max(axis=1)
    alphas = np.linspace(0.5, 1.0, 64)
    errors = np.stack([((np.clip(np.round(flat / (bound * a / 63)[:, None]), -63, 63) * (bound * a / 63)[:, None] - flat) ** 2).sum(axis=1) for a in alphas])
    expected = (bound * alphas[np.argmin(errors, axis=0)] / 63).astype(np.float32)
    np.testing.assert_array_equal(weight_scales(w, 0, "mse", 63), expected)
