"""Calibration statistics stream: memory stays bounded however many samples there are."""

from __future__ import annotations

import tracemalloc

import numpy as np
from onnx import helper

from onnxopt.calibration import open_calibration
from onnxopt.passes.quantize.collect import collect_histograms
from tests.conftest import make_model, tensor

SHAPE = (1, 16, 64, 64)  # 256 KiB per sample


def relu_model():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])]
    return make_model(nodes, [tensor("x", list(SHAPE))], [tensor("y", list(SHAPE))])


def peak_bytes(folder, count, model):
    data = open_calibration(folder, model, limit=count)
    tracemalloc.start()
    try:
        hists, seen = collect_histograms(model, ["x", "r"], data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, hists, seen


def test_histogram_collection_memory_does_not_grow_with_samples(tmp_path):
    model = relu_model()
    rng = np.random.default_rng(0)
    for i in range(60):
        np.savez(tmp_path / f"{i:03d}.npz", x=rng.standard_normal(SHAPE).astype(np.float32) * (1 + i / 10))
    small, _, _ = peak_bytes(tmp_path, 6, model)
    large, hists, seen = peak_bytes(tmp_path, 60, model)
    sample = int(np.prod(SHAPE)) * 4
    assert seen == 60
    assert large < 8 * sample  # a few samples' worth, not 60
    assert large < 1.5 * small + sample
    # and the statistics are of all 60 samples, not a prefix
    assert hists["x"].total == 60 * np.prod(SHAPE)
    last = np.load(tmp_path / "059.npz")["x"]
    assert hists["x"].max == np.float32(last.max()) or hists["x"].max >= last.max()
