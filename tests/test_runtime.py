"""onnxruntime sessions: optimization levels, options for paired timing, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxopt.errors import BackendError
from onnxopt.runtime import best_providers, make_session, run_model, run_session, session_options
from tests.conftest import init, make_model, tensor


def _model():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 2])], [init("w", np.eye(3, 2, dtype=np.float32))])


def test_run_model_computes_the_graph():
    x = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    np.testing.assert_array_equal(run_model(_model(), {"x": x})["y"], np.maximum(x[:, :2], 0))


def test_session_options_for_paired_runs():
    so = session_options(threads=2, opt_level="disable", spinning=False)
    assert so.intra_op_num_threads == 2
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.disable_prepacking") == "1"
    with pytest.raises(BackendError, match="unknown graph optimization level 'fast'"):
        session_options(opt_level="fast")


def test_errors_are_one_line():
    session = make_session(_model())
    with pytest.raises(BackendError, match="^onnxruntime failed to run the model: [^\n]*$"):
        run_session(session, {"x": np.zeros((2, 4), np.float32)})
    broken = _model()
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(BackendError, match="^onnxruntime cannot load the model: [^\n]*$"):
        make_session(broken)


def test_cpu_is_always_a_provider():
    assert best_providers(allow_gpu=False) == ["CPUExecutionProvider"]
    assert best_providers()[-1] == "CPUExecutionProvider"


def test_shared_weights_stand_in_only_for_identical_tensors():
    """Sessions under shared_weights take matching large initializers from memory: same outputs, the
    model left byte for byte as it was, and a tensor whose bytes differ travels in the model."""
    import onnx

    from onnxopt.runtime import SharedWeights, shared_weights

    r = np.random.default_rng(0)
    w1, w2 = r.standard_normal((64, 64)).astype(np.float32), r.standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]

    def model(second):
        return make_model(nodes, [tensor("x", [2, 64])], [tensor("y", [2, 64])], [init("w1", w1), init("w2", second)])

    x = r.standard_normal((2, 64)).astype(np.float32)
    original, variant = model(w2), model(w2 * 2)  # the variant shares w1 only
    expected = [run_session(make_session(m), {"x": x})["y"] for m in (original, variant)]
    before = variant.SerializeToString()

    so = session_options()
    payload = SharedWeights(original).serialize(variant, so)
    assert len(payload) < len(before) - w1.nbytes + 1024  # w1 left the bytes, w2 did not
    assert len(payload) > w2.nbytes
    assert variant.SerializeToString() == before

    with shared_weights(original):
        got = [run_session(make_session(m), {"x": x})["y"] for m in (original, variant)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
    assert variant.SerializeToString() == before and onnx.checker.check_model(variant) is None


def test_large_models_load_through_a_temporary_file(monkeypatch, tmp_path):
    """Above LOAD_FROM_FILE_BYTES a session is built from a temporary file with external data (ORT
    maps the weights instead of copying them out of bytes): same outputs, the model untouched, no
    file left behind."""
    import tempfile

    import onnxopt.runtime as runtime

    r = np.random.default_rng(1)
    w = r.standard_normal((64, 64)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [2, 64])], [tensor("y", [2, 64])], [init("w", w)])
    x = r.standard_normal((2, 64)).astype(np.float32)
    before = model.SerializeToString()
    expected = run_session(make_session(model), {"x": x})["y"]
    monkeypatch.setattr(runtime, "LOAD_FROM_FILE_BYTES", 1024)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    got = run_session(make_session(model), {"x": x})["y"]
    np.testing.assert_array_equal(expected, got)
    assert model.SerializeToString() == before
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone
