"""The one statistics pass: histograms, layer Gram matrices and reference outputs from a single session."""

from __future__ import annotations

import numpy as np

from onnxopt.graphs import import_graph
from onnxopt.passes.quantize.collect import collect_histograms
from onnxopt.passes.quantize.fidelity import run_all
from onnxopt.passes.quantize.stats import collect_statistics
from onnxopt.passes.reconstruct import gram, layer_input_rows
from tests.passes.quantize.qmodels import conv_net, images


def test_one_pass_matches_the_separate_collections():
    model, data = conv_net(), images(6)
    graph = import_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    layers = {"conv1": nodes["conv1"], "conv2": nodes["conv2"]}
    stats = collect_statistics(model, ["r1", "c2"], layers, {"conv1", "conv2"}, data, bins=256, rows_per_sample=10_000)
    assert stats.passes == 1 and stats.samples == 6
    hists, _ = collect_histograms(model, ["r1", "c2"], data, bins=256)
    for name in ("r1", "c2"):
        np.testing.assert_array_equal(stats.histograms[name].counts, hists[name].counts)
    for ref, out in zip(stats.reference, run_all(model, data)):
        np.testing.assert_allclose(ref["logits"], out["logits"], rtol=1e-6)
    conv1 = nodes["conv1"]
    rows = [layer_input_rows(d["x"], "Conv", conv1.attrs, tuple(conv1.inputs[1].shape)) for d in data]
    np.testing.assert_allclose(stats.layers["conv1"].fit, sum(gram(r) for r in rows[0::2]), rtol=1e-5)
    np.testing.assert_allclose(stats.layers["conv1"].held_out, sum(gram(r) for r in rows[1::2]), rtol=1e-5)


def test_gram_matrices_over_the_memory_budget_take_more_passes():
    model, data = conv_net(), images(4)
    nodes = {n.name: n for n in import_graph(model).nodes}
    layers = {"conv1": nodes["conv1"], "conv2": nodes["conv2"]}
    stats = collect_statistics(model, ["r1"], layers, {"conv1", "conv2"}, data, bins=256, memory_budget=1)
    assert stats.passes == 2 and stats.samples == 4 and len(stats.reference) == 4
    assert all(stats.layers[n].fit is not None for n in layers)
