"""Sequential bias correction: layer after layer, each measured with the earlier shifts applied."""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxopt.passes.quantize.sequential import sample_means, sequential_shifts
from onnxopt.passes.reconstruct import capture
from tests.conftest import init, make_model, tensor
from tests.passes.quantize.qmodels import compile_int8, images, mean_cosine, ops


def chain(b1_offset=0.0, seed=0):
    """x -> Conv 3->6 (b1) -> Conv 6->4 (b2) -> y: a linear chain, so a mean error moves straight through."""
    r = np.random.default_rng(seed)
    w1 = r.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = r.standard_normal((4, 6, 1, 1)).astype(np.float32) * 0.5
    b1 = (np.full(6, 0.1) + b1_offset).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["y"], name="conv2")]
    inits = [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", np.zeros(4, np.float32))]
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])], inits)


def reference_means(model, names, data):
    values = {name: [] for name in names}
    for feeds in data:
        for name, value in capture(model, names, [feeds]).items():
            values[name].append(sample_means(value))
    return values


def test_each_layer_is_measured_after_the_earlier_shifts():
    """conv1's bias is off by 0.5: its own shift undoes that, and conv2, measured afterwards, needs none.
    (All at once, conv2 would also be shifted by -W2 x 0.5 and the output would be off the other way.)"""
    data = images(12)
    reference = reference_means(chain(), ["c1", "y"], data)
    shifts = sequential_shifts(chain(b1_offset=0.5), reference, ["c1", "y"], data)
    np.testing.assert_allclose(shifts["c1"], -0.5, atol=1e-4)
    np.testing.assert_allclose(shifts.get("y", 0.0), 0.0, atol=1e-5)  # nothing left once conv1's shift is applied (float rounding aside)


def test_noise_is_not_corrected():
    """Mean errors within 3 standard errors of zero (across samples) are noise: no shift."""
    data = images(12)
    reference = reference_means(chain(), ["c1", "y"], data)
    r = np.random.default_rng(4)
    noisy = {name: [m + r.standard_normal(m.shape) * 0.01 for m in means] for name, means in reference.items()}
    assert sequential_shifts(chain(), noisy, ["c1", "y"], data) == {}


def mobile_block(seed=0):
    """x -> Conv 3->8 -> Clip(0, 6) -> depthwise 3x3 -> Clip(0, 6) -> Conv 8->4: channel ranges 3000x apart,
    so the small channels share a coarse int8 grid and their rounding is biased, not noise."""
    r = np.random.default_rng(seed)
    spread = np.geomspace(0.01, 30.0, 8).astype(np.float32)
    w1 = (r.standard_normal((8, 3, 3, 3)) * spread[:, None, None, None]).astype(np.float32)
    b1 = (r.standard_normal(8) * spread).astype(np.float32)
    dw = r.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5
    w3 = (r.standard_normal((4, 8, 1, 1)) / np.sqrt(8)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="act1"),
             helper.make_node("Conv", ["a1", "dw"], ["c2"], pads=[1, 1, 1, 1], group=8, name="dwconv"),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"], name="act2"),
             helper.make_node("Conv", ["a2", "w3"], ["y"], name="conv3")]
    inits = [init("w1", w1), init("b1", b1), init("dw", dw), init("w3", w3),
             init("lo", np.array(0.0, np.float32)), init("hi", np.array(6.0, np.float32))]
    return make_model(nodes, [tensor("x", [1, 3, 16, 16])], [tensor("y", [1, 4, 16, 16])], inits)


def test_int8_with_sequential_correction_is_closer_to_float_on_held_out_inputs():
    model = mobile_block()
    data = [{"x": f["x"] * 2} for f in images(32, shape=(1, 3, 16, 16))]
    held_out = [{"x": f["x"] * 2} for f in images(32, seed=9, shape=(1, 3, 16, 16))]
    common = dict(max_drop=-1.0, latency_aware=False)
    plain = compile_int8(model, data, sequential_correction=False, **common)
    corrected = compile_int8(model, data, **common)
    assert ops(plain.model) == ops(corrected.model)  # biases change, nothing else
    report = corrected.report.artifacts["quantize"]["sequential_correction"]
    assert report["layers_shifted"] >= 1 and report["channels_shifted"] >= 1
    before, after = 1 - mean_cosine(model, plain.model, held_out), 1 - mean_cosine(model, corrected.model, held_out)
    assert after < before


def test_a_segment_onnxruntime_cannot_run_skips_the_correction_with_a_warning(monkeypatch):
    from onnxopt.errors import BackendError
    from onnxopt.passes.quantize import int8

    def failing(*args, **kwargs):
        raise BackendError("onnxruntime failed on the segment ending at c1: test")

    monkeypatch.setattr(int8, "sequential_shifts", failing)
    model = mobile_block()
    data = [{"x": f["x"] * 2} for f in images(8, shape=(1, 3, 16, 16))]
    result = compile_int8(model, data, max_drop=-1.0, latency_aware=False)
    assert result.report.artifacts["quantize"]["sequential_correction"]["layers_shifted"] == 0
    assert any("sequential correction skipped" in w for w in result.report.warnings)
    assert "QuantizeLinear" in ops(result.model)  # still the int8 model
