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
