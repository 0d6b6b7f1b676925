"""Shared reconstruction: im2col matches a real Conv, least squares recovers weights, capture works."""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxopt.passes.reconstruct import bias_correction, capture, channels_last_rows, im2col, least_squares, relative_error
from onnxopt.runtime import run_model
from tests.conftest import init, make_model, tensor


def conv_model(w, b, strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2)):
    node = helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=list(strides), pads=list(pads), dilations=list(dilations))
    relu = helper.make_node("Relu", ["c"], ["y"])
    return make_model([node, relu], [tensor("x", [2, w.shape[1], 9, 9])], [tensor("y", ["a", "b", "c", "d"])], [init("w", w), init("b", b)])


def test_im2col_times_weights_equals_onnxruntime_conv():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    model = conv_model(w, b)
    conv_out = capture(model, ["c"], [{"x": x}])["c"]
    cols = im2col(x, (3, 2), strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2))
    ours = cols @ w.reshape(5, -1).T + b
    np.testing.assert_allclose(ours, channels_last_rows(conv_out), rtol=1e-4, atol=1e-4)
    assert np.allclose(run_model(model, {"x": x})["y"], np.maximum(conv_out, 0))


def test_im2col_of_a_pointwise_conv_equals_onnxruntime_conv():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
    conv_out = capture(conv_model(w, b, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)), ["c"], [{"x": x}])["c"]
    ours = im2col(x, (1, 1)) @ w.reshape(4, -1).T + b
    np.testing.assert_allclose(ours, channels_last_rows(conv_out), rtol=1e-4, atol=1e-4)


def test_least_squares_recovers_weights_and_bias():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 6))
    true_w, true_b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    w, b = least_squares(x, x @ true_w + true_b, ridge=1e-9)
    np.testing.assert_allclose(w, true_w, atol=1e-4)
    np.testing.assert_allclose(b, true_b, atol=1e-4)


def test_bias_correction_removes_a_channel_shift():
    rng = np.random.default_rng(2)
    teacher = rng.standard_normal((4, 3, 5, 5))
    student = teacher - np.array([1.0, -2.0, 0.5]).reshape(1, 3, 1, 1)
    shift = bias_correction(teacher, student)
    np.testing.assert_allclose(shift, [1.0, -2.0, 0.5], atol=1e-6)
    assert relative_error(teacher, student + shift.reshape(1, 3, 1, 1)) < 1e-6


def depthwise_model(w, b):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=w.shape[0], pads=[1, 1, 1, 1], strides=[2, 2])
    return make_model([node], [tensor("x", [1, w.shape[0], 9, 9])], [tensor("y", [1, w.shape[0], 5, 5])], [init("w", w), init("b", b)])


def test_a_depthwise_conv_is_refit_channel_by_channel():
    import onnx_graphsurgeon as gs

    from onnxopt.passes.reconstruct import LayerTarget, depthwise, refit_layers

    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    teacher = depthwise_model(w, b)
    graph = gs.import_onnx(depthwise_model(w + 0.3 * rng.standard_normal(w.shape).astype(np.float32), np.zeros(6, np.float32)))
    node = graph.nodes[0]
    assert depthwise(node)
    data = [{"x": rng.standard_normal((1, 6, 9, 9)).astype(np.float32)} for _ in range(8)]
    (fit,) = refit_layers(graph, [LayerTarget(node, teacher, "y")], data)
    assert fit["method"] == "depthwise" and fit["channels_refit"] == 6
    assert fit["error_before"] > 0.3 and fit["error_after"] < 1e-3
    np.testing.assert_allclose(node.inputs[1].values, w, atol=1e-3)  # 25 rows x 8 samples per channel: the true weights
    np.testing.assert_allclose(node.inputs[2].values, b, atol=1e-3)


def test_keep_if_better_leaves_a_layer_whose_refit_does_not_hold_on_held_out_samples():
    import onnx_graphsurgeon as gs

    from onnxopt.passes.reconstruct import LayerTarget, refit_layers

    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    v = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    pads = [1, 1, 1, 1]
    # the teacher adds sin(100 * v*x) to the layer's output: noise no linear refit can predict,
    # so a full refit only fits the calibration rows' noise, and keeping the layer holds better
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c0"], pads=pads),
        helper.make_node("Conv", ["x", "v"], ["p"], pads=pads),
        helper.make_node("Mul", ["p", "k"], ["pk"]),
        helper.make_node("Sin", ["pk"], ["s"]),
        helper.make_node("Add", ["c0", "s"], ["c"]),
    ]
    k = np.array(100.0, np.float32)
    teacher = make_model(nodes, [tensor("x", [1, 3, 9, 9])], [tensor("c", [1, 4, 9, 9])], [init("w", w), init("b", b), init("v", v), init("k", k)])
    student = make_model(nodes[:1], [tensor("x", [1, 3, 9, 9])], [tensor("c0", [1, 4, 9, 9])], [init("w", w), init("b", b)])
    data = [{"x": rng.standard_normal((1, 3, 9, 9)).astype(np.float32)} for _ in range(4)]
    fits = {}
    for keep in (False, True):
        graph = gs.import_onnx(student)
        node = graph.nodes[0]
        (fits[keep],) = refit_layers(graph, [LayerTarget(node, teacher, "c")], data, rows_per_sample=30, keep_if_better=keep)
        fits[keep]["weights"] = np.asarray(node.inputs[1].values).copy()
    assert fits[False]["method"] == "full" and fits[False]["error_after"] < fits[False]["error_before"]  # in-sample it looks better
    assert fits[True]["method"] == "keep"
    np.testing.assert_array_equal(fits[True]["weights"], w)
