"""A streaming histogram of one tensor's values: memory fixed by the bin count, not by the data.

Activations are seen one calibration sample at a time. The histogram covers [-R, R] with a fixed
number of bins; when a sample exceeds R, R doubles (as often as needed) and adjacent bins merge
pairwise, which is exact because the bin edges of the wider histogram are a subset of the old
ones. The exact min and max are kept beside it for the minmax calibrator.
"""

from __future__ import annotations

import numpy as np


class StreamingHistogram:
    """Counts of values in `bins` equal bins over [-radius, radius], plus the exact min and max."""

    def __init__(self, bins: int = 4096):
        if bins < 16 or bins % 4:
            raise ValueError("bins must be a multiple of 4 and at least 16")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.radius = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.total = 0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.radius, self.radius, self.bins + 1)

    @property
    def bin_width(self) -> float:
        return 2 * self.radius / self.bins

    def _grow_to(self, needed: float) -> None:
        if self.radius == 0.0:
            self.radius = float(needed)
            return
        while self.radius < needed:
            half = self.bins // 2
            pairs = self.counts.reshape(-1, 2).sum(axis=1)  # bins merge two by two
            grown = np.zeros_like(self.counts)
            grown[half // 2 : half // 2 + half] = pairs
            self.counts = grown
            self.radius *= 2

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32).ravel()
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):  # min and max see any NaN or inf: filter only then
            values = values[np.isfinite(values)]
            if values.size == 0:
                return
            lo, hi = float(values.min()), float(values.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        needed = max(abs(lo), abs(hi))
        if needed > self.radius:
            self._grow_to(needed if needed > 0 else 1e-8)
        if self.radius == 0.0:
            self.radius = 1e-8
        index = np.floor((values + self.radius) / self.bin_width).astype(np.int64)
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)
        self.total += values.size

    def absolute(self) -> tuple[np.ndarray, float]:
        """Counts of |x| in bins/2 bins over [0, radius] (the folded histogram TensorRT calibrates on)."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1], self.radius

    def nbytes(self) -> int:
        return self.counts.nbytes
