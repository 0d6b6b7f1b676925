"""ort-fp32 on the real zoo models: valid, equal outputs on real inputs, no Constant nodes, never bigger."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.calibration import open_calibration
from onnxopt.runtime import run_model
from tests.conftest import ZOO_MODELS, zoo_model

pytestmark = pytest.mark.real


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_ort_fp32_on_real_model(name):
    path, _, eval_dir = zoo_model(name)
    original = onnx.load(str(path))
    samples = list(open_calibration(eval_dir, original, limit=4))
    shapes = {k: v.shape for k, v in samples[0].items()}
    result = onnxopt.compile(str(path), target="ort-fp32", save=False, input_shapes=shapes, profile_iters=4)
    optimized = result.model
    onnx.checker.check_model(optimized)
    kinds = [n.op_type for n in optimized.graph.node]
    assert "Constant" not in kinds
    assert len(kinds) <= len(original.graph.node)
    for feeds in samples:
        expected, actual = run_model(original, feeds), run_model(optimized, feeds)
        for key, ref in expected.items():
            scale = float(np.abs(ref).max()) or 1.0
            assert float(np.abs(actual[key] - ref).max()) <= 1e-4 * scale, key
    report = result.report.to_dict()
    assert report["latency"]["speedup"] > 0 and report["latency"]["pairs"] == 4
    assert report["verification"]["ok"]
