"""Calibration sources: every supported form yields validated feed dicts; bad files say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxopt.calibration import open_calibration
from onnxopt.errors import CalibrationError
from tests.conftest import make_model, tensor


@pytest.fixture
def model():
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["N", 3])], [tensor("y", ["N", 3])])


def sample(i):
    return np.full((1, 3), i, np.float32)


def test_folder_of_npz(tmp_path, model):
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=sample(i))
    data = open_calibration(tmp_path, model)
    assert len(data) == 3
    assert [float(f["x"][0, 0]) for f in data] == [0, 1, 2]
    assert [float(f["x"][0, 0]) for f in data] == [0, 1, 2]  # re-iterable


def test_folder_of_npy_and_limit(tmp_path, model):
    for i in range(4):
        np.save(tmp_path / f"{i}.npy", sample(i))
    data = open_calibration(tmp_path, model, limit=2)
    assert len(data) == 2 and list(list(data)[1]) == ["x"]


def test_stacked_npz(tmp_path, model):
    np.savez(tmp_path / "all.npz", x=np.arange(15, dtype=np.float32).reshape(5, 3))
    feeds = list(open_calibration(tmp_path / "all.npz", model))
    assert len(feeds) == 5 and feeds[4]["x"].shape == (1, 3)


def test_reader_protocol_and_generator(model):
    class Reader:
        def __init__(self):
            self.items = iter([{"x": sample(0)}, {"x": sample(1)}])

        def get_next(self):
            return next(self.items, None)

    data = open_calibration(Reader(), model)
    assert len(list(data)) == 2 and len(list(data)) == 2
    gen = ({"x": sample(i)} for i in range(3))
    data = open_calibration(gen, model)
    assert len(list(data)) == 3 and len(list(data)) == 3


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"wrong": sample(0)}, "missing input"),
        ({"x": np.zeros((1, 3), np.int32)}, "dtype"),
        ({"x": np.zeros((3,), np.float32)}, "rank"),
    ],
)
def test_bad_samples_name_the_file(tmp_path, model, payload, message):
    np.savez(tmp_path / "bad.npz", **payload)
    with pytest.raises(CalibrationError, match=message) as info:
        list(open_calibration(tmp_path, model))
    assert "bad.npz" in str(info.value)


def test_pickled_npy_is_refused(tmp_path, model):
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationError, match="not a readable"):
        list(open_calibration(tmp_path, model))


def test_missing_and_empty(tmp_path, model):
    with pytest.raises(CalibrationError, match="no such"):
        open_calibration(tmp_path / "nope", model)
    with pytest.raises(CalibrationError, match="no .npz or .npy"):
        open_calibration(tmp_path, model)


def test_random_needs_explicit_request_and_warns(model):
    with pytest.warns(UserWarning, match="random data"):
        data = open_calibration("random", model, limit=3)
    assert len(list(data)) == 3
