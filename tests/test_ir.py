"""Loading and saving: every bad file is a clear OnnxoptError; saves are atomic; inputs untouched."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxopt.errors import ModelInvalidError, ModelLoadError, UnsafePathError
from onnxopt.ir import load_model, save_model
from tests.conftest import init, make_model, tensor


def small_model(weight_elems=16):
    w = np.arange(weight_elems, dtype=np.float32).reshape(1, -1)
    return make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [tensor("x", [1, 1])],
        [tensor("y", [1, weight_elems])],
        [init("w", w)],
    )


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_text_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        load_model(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "m.onnx"
    data = small_model(4096).SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_model(path)


def test_empty_file_and_folder(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(tmp_path / "empty.onnx")
    with pytest.raises(ModelLoadError, match="folder"):
        load_model(tmp_path)


def test_checker_failure_is_model_invalid(tmp_path):
    model = small_model()
    model.graph.node[0].input[0] = "nobody_produces_this"
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelInvalidError, match="reads tensor 'nobody_produces_this', which no node"):
        load_model(path)


def test_old_opset_is_upgraded_and_verified(tmp_path):
    """A model below opset 7 comes back at opset 7, its weights kept, its outputs those of the original."""
    from tests.conftest import assert_same_outputs

    model = small_model(512)  # a 2 KB weight: left out of the converted copy, then put back
    model.opset_import[0].version = 6
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    upgrades = []
    loaded = load_model(path, upgrades=upgrades)
    assert loaded.opset_import[0].version == 7
    assert [u.to_dict() for u in upgrades] == [{"from": 6, "to": 7, "verified": "outputs equal to the original's in onnxruntime"}]
    assert {i.name for i in loaded.graph.initializer} == {i.name for i in model.graph.initializer}
    assert not {i.name for i in loaded.graph.input} & {i.name for i in loaded.graph.initializer}
    assert_same_outputs(model, loaded)


def test_old_opset_the_converter_cannot_upgrade_is_refused_with_its_reason():
    from onnx import TensorProto, helper

    pad = helper.make_node("Pad", ["x"], ["y"], paddings=[0, 1, 0, 1])
    graph = helper.make_graph([pad], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)])
    with pytest.raises(ModelInvalidError, match=r"opset 1 is older than 7 and onnx's version converter cannot upgrade it \(No Adapter From Version 1 for Pad\)"):
        load_model(model)


def _save_external(model, folder, location):
    onnx.external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    onnx.save_model(model, str(folder / "m.onnx"))
    loaded = onnx.load_model(str(folder / "m.onnx"), load_external_data=False)
    for t in loaded.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    (folder / "m.onnx").write_bytes(loaded.SerializeToString())
    return folder / "m.onnx"


def test_external_data_loads(tmp_path):
    path = _save_external(small_model(), tmp_path, "w.bin")
    model = load_model(path)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]), np.arange(16, dtype=np.float32).reshape(1, -1))


@pytest.mark.parametrize("location", ["../escape.bin", "/etc/passwd", "sub/../../escape.bin"])
def test_external_data_escaping_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "escape.bin").write_bytes(b"\0" * 64)
    path = _save_external(small_model(), folder, location)
    with pytest.raises(UnsafePathError, match="outside|only paths inside"):
        load_model(path)


def test_external_data_missing(tmp_path):
    path = _save_external(small_model(), tmp_path, "w.bin")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "out.onnx"
    save_model(small_model(), out)
    assert load_model(out).graph.node[0].op_type == "MatMul"
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_save_with_external_data_round_trips(tmp_path):
    model = small_model(1024)
    out = tmp_path / "big.onnx"
    save_model(model, out, external_data=True)
    assert (tmp_path / "big.onnx.data").exists()
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    again = load_model(out)
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(again.graph.initializer[0]), onnx.numpy_helper.to_array(model.graph.initializer[0])
    )
    # the in-memory model still holds its weights after saving
    assert model.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT


def test_input_file_is_never_modified(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(small_model().SerializeToString())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    load_model(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_model_size_counts_weights_in_initializers_and_constant_nodes():
    """Paddle and TF exports hold their weights in Constant nodes; the size must count them too."""
    from onnxopt.ir import model_size_bytes

    rng = np.random.default_rng(0)
    value = onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32))
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=value, name="weights"),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [1, 64])], [tensor("y", [1, 64])], [init("w2", rng.standard_normal((64, 64)).astype(np.float32))])
    assert abs(model_size_bytes(model) - model.ByteSize()) < 100
