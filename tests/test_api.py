"""The Python API: paths or ModelProtos in, CompileResult out, input never modified."""

from __future__ import annotations

import onnx
import pytest

import onnxopt
from tests.conftest import assert_same_outputs


def test_compile_model_proto_in_memory(conv_model):
    before = conv_model.SerializeToString()
    result = onnxopt.compile(conv_model, profile=False)
    assert isinstance(result.model, onnx.ModelProto)
    assert result.output_path is None
    assert conv_model.SerializeToString() == before
    assert_same_outputs(conv_model, result.model)
    assert result.report.verification["ok"]
    assert result.report.after["nodes"] < result.report.before["nodes"]


def test_compile_writes_only_what_it_is_told(tmp_path, conv_model):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model, str(path))
    result = onnxopt.compile(str(path), profile=False)
    assert result.output_path is None and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert "wrote" not in result.report.summary()
    out = tmp_path / "out.onnx"
    written = onnxopt.compile(str(path), output=out, profile=False)
    assert written.output_path == out and out.exists() and "wrote" in written.report.summary()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_save_true_still_writes_the_default_path_with_a_deprecation_warning(tmp_path, conv_model):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model, str(path))
    with pytest.warns(DeprecationWarning, match="output=PATH"):
        result = onnxopt.compile(str(path), profile=False, save=True)
    assert result.output_path == tmp_path / "m.ort-fp32.onnx" and result.output_path.exists()


def test_user_error_is_onnxopt_error(tmp_path):
    with pytest.raises(onnxopt.OnnxoptError):
        onnxopt.compile(str(tmp_path / "missing.onnx"))


def test_deterministic_output(tmp_path, conv_model):
    a = onnxopt.compile(conv_model, profile=False).model.SerializeToString()
    b = onnxopt.compile(conv_model, profile=False).model.SerializeToString()
    assert a == b
