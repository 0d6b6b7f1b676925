"""The one statistics pass: histograms, layer Gram matrices and reference outputs from a single session."""

from __future__ import annotations

import numpy as np

from onnxopt.graphs import import_graph
from onnxopt.passes.quantize.collect import collect_histograms
from onnxopt.passes.quantize.fidelity import run_all
from onnxopt.passes.quantize.stats import _gram_bytes, collect_statistics
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
    for got, want in ((stats.layers["conv1"].fit, sum(gram(r) for r in rows[0::2])), (stats.layers["conv1"].held_out, sum(gram(r) for r in rows[1::2]))):
        assert got.dtype == np.float32  # stored in float32 (memory)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_no_gram_matrices_where_a_half_would_have_fewer_rows_than_inputs():
    """GPTQ skips such layers (weights.py), so their Gram matrices are not collected; the row count
    is predicted from the static shapes and matches what the pass collects."""
    model, data = conv_net(), images(4)
    nodes = {n.name: n for n in import_graph(model).nodes}
    layers = {"conv1": nodes["conv1"]}  # 3x3 over 3 channels: 27 inputs, 64 output positions per sample
    few = collect_statistics(model, [], layers, {"conv1"}, data, bins=64, rows_per_sample=10)  # 10 rows x 2 samples < 27
    assert few.layers["conv1"].too_few_rows and few.layers["conv1"].fit is None and few.layers["conv1"].rows == 40
    enough = collect_statistics(model, [], layers, {"conv1"}, data, bins=64, rows_per_sample=10_000)
    layer = enough.layers["conv1"]
    assert not layer.too_few_rows and layer.fit is not None and layer.fit_rows == layer.held_out_rows == 2 * 64


def test_gram_matrices_over_the_memory_budget_take_more_passes():
    model, data = conv_net(), images(4)
    nodes = {n.name: n for n in import_graph(model).nodes}
    layers = {"conv1": nodes["conv1"], "conv2": nodes["conv2"]}
    stats = collect_statistics(model, ["r1"], layers, {"conv1", "conv2"}, data, bins=256, memory_budget=1)
    assert stats.passes == 2 and stats.samples == 4 and len(stats.reference) == 4
    assert all(stats.layers[n].fit is not None for n in layers)


def test_memory_budget_counts_float32_grams_of_the_input_columns():
    import onnx_graphsurgeon as gs

    def node(op, shape, **attrs):
        return gs.Node(op, inputs=[gs.Variable("x"), gs.Constant("w", np.zeros(shape, np.float32))], attrs=attrs)

    assert _gram_bytes(node("MatMul", (384, 1536))) == 384 * 384 * 4  # K is the weight's rows, not its larger side
    assert _gram_bytes(node("Gemm", (1536, 384), transB=1)) == 384 * 384 * 4
    assert _gram_bytes(node("Conv", (32, 1, 3, 3), group=32)) == 32 * 9 * 9 * 4


def test_sampled_conv_rows_are_the_rows_of_the_full_unfolding():
    import onnx_graphsurgeon as gs

    from onnxopt.passes.quantize.stats import _input_rows

    r = np.random.default_rng(0)
    cases = [({"group": 3, "pads": [1, 0, 1, 2], "strides": [2, 1]}, (6, 2, 3, 3), (2, 6, 17, 15)),
             ({"pads": [1, 1, 1, 1], "dilations": [2, 2]}, (4, 3, 3, 3), (1, 3, 20, 20)),
             ({}, (5, 8, 1, 1), (1, 8, 30, 30)),
             ({"group": 16, "pads": [2, 2, 2, 2], "strides": [2, 2]}, (16, 1, 5, 5), (2, 16, 21, 21)),  # depthwise
             ({"group": 8, "pads": [1, 1, 1, 1]}, (8, 1, 3, 3), (1, 8, 6, 6))]  # 36 positions: every one, no draw
    for attrs, wshape, xshape in cases:
        x = r.standard_normal(xshape).astype(np.float32)
        node = gs.Node("Conv", attrs=attrs, inputs=[gs.Variable("x"), gs.Constant("w", np.zeros(wshape, np.float32))], outputs=[gs.Variable("y")])
        ours, theirs = np.random.default_rng(3), np.random.default_rng(3)
        sampled = _input_rows(x, node, 100, ours)
        full = layer_input_rows(x, "Conv", attrs, wshape, max_rows=100, rng=theirs)
        np.testing.assert_array_equal(sampled, full)
        assert ours.random() == theirs.random()  # the same draws: later layers sample the same rows too


def test_layer_input_means_for_bias_correction():
    model, data = conv_net(), images(5)
    nodes = {n.name: n for n in import_graph(model).nodes}
    stats = collect_statistics(model, [], {"conv2": nodes["conv2"]}, set(), data, bins=64, rows_per_sample=10_000)
    r1 = np.concatenate([run_all(_with_r1(model), [d])[0]["r1"] for d in data])  # (5, 8, 8, 8)
    np.testing.assert_allclose(stats.layers["conv2"].mean[0], r1.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert stats.layers["conv2"].fit is None  # no Gram matrix asked for


def _with_r1(model):
    from onnxopt.passes.reconstruct import with_outputs

    return with_outputs(model, ["r1"])


def test_threaded_statistics_are_deterministic():
    """Layers update side by side in threads; each draws its sampled rows from its own stream, so two
    runs (and any thread schedule) give the same statistics bit for bit."""
    model, data = conv_net(), images(6)
    nodes = {n.name: n for n in import_graph(model).nodes}
    layers = {"conv1": nodes["conv1"], "conv2": nodes["conv2"]}
    a, b = (collect_statistics(model, ["r1", "c2"], layers, {"conv1", "conv2"}, data, bins=256, rows_per_sample=40) for _ in range(2))
    for name in layers:
        assert a.layers[name].rows == 6 * 40  # rows were sampled (fewer than the positions), so draws matter
        for field in ("fit", "held_out", "total"):
            np.testing.assert_array_equal(getattr(a.layers[name], field), getattr(b.layers[name], field))
    for name in ("r1", "c2"):
        np.testing.assert_array_equal(a.histograms[name].counts, b.histograms[name].counts)
