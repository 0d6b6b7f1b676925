"""GPTQ rounding and bias correction recover what round-to-nearest loses; validation guards overfitting."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.passes.quantize.placement import WeightSpec
from onnxopt.passes.quantize.rounding import gptq
from onnxopt.passes.quantize.weights import _validated_gptq
from onnxopt.passes.reconstruct import capture
from tests.passes.quantize.qmodels import compile_int8, conv_net, images


def correlated_inputs(rows=4000, k=48, seed=0):
    r = np.random.default_rng(seed)
    basis = r.standard_normal((8, k))
    return r.standard_normal((rows, 8)) @ basis + 0.05 * r.standard_normal((rows, k))


def test_gptq_beats_round_to_nearest_on_the_layer_output():
    x = correlated_inputs()
    w = np.random.default_rng(1).standard_normal((1, 16, x.shape[1]))
    s = np.abs(w).max(axis=2) / 127
    h = (x.T @ x)[None]
    q = gptq(w, s, h)
    assert q.dtype.kind == "f" and np.all(q == np.round(q)) and np.abs(q).max() <= 127
    nearest = np.clip(np.round(w / s[..., None]), -127, 127)
    err = lambda qq: np.linalg.norm(x @ (w[0] - qq[0] * s[0][:, None]).T)
    assert err(q) < 0.5 * err(nearest)


def test_validation_falls_back_to_nearest_when_gptq_would_overfit():
    k = 32
    r = np.random.default_rng(2)
    fit_x = r.standard_normal((400, 4)) @ r.standard_normal((4, k))  # inputs in a 4-d subspace
    val_x = r.standard_normal((400, k))  # held-out inputs everywhere
    weight = r.standard_normal((8, k)).astype(np.float32)
    node = gs.Node("Gemm", inputs=[gs.Variable("x"), gs.Constant("w", weight)], outputs=[gs.Variable("y")], attrs={"transB": 1})
    spec = WeightSpec(1, 0)
    _, choice = _validated_gptq(node, spec, (fit_x.T @ fit_x)[None], (val_x.T @ val_x)[None], "minmax", (0.01,))
    assert choice == "nearest"
    _, choice = _validated_gptq(node, spec, (val_x.T @ val_x)[None], (val_x.T @ val_x)[None], "minmax", (0.01,))
    assert choice.startswith("gptq")


def test_bias_correction_removes_the_mean_error_of_rounded_weights():
    model, data = conv_net(with_softmax=False), images(16)
    errors = {}
    for corrected in (False, True):
        q = compile_int8(model, data, target="trt-int8", rounding="nearest", bias_correction=corrected).model
        float_out = capture(model, ["c2"], data)["c2"]
        quant_out = capture(q, ["c2"], data)["c2"]
        errors[corrected] = np.abs((float_out - quant_out).mean(axis=(0, 2, 3))).mean()
    assert errors[True] < 0.5 * errors[False]
