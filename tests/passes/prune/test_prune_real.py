"""Pruning real exported models from the benchmark zoo: valid, runnable, smaller (skipped without the zoo)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.runtime import run_model

ZOO = Path(os.environ.get("ONNXOPT_ZOO", Path.home() / ".cache" / "onnxopt" / "zoo"))
SLOW = pytest.mark.skipif(not os.environ.get("ONNXOPT_SLOW"), reason="slow; set ONNXOPT_SLOW=1 to run")


@pytest.mark.real
@pytest.mark.parametrize(
    "name, shapes",
    [
        ("efficientnet_lite0", None),
        ("ppocr_cls", None),
        pytest.param("ppocr_det", {"x": (1, 3, 320, 320)}, marks=[pytest.mark.slow, SLOW]),  # ~25 s of symbolic shape inference
    ],
)
def test_real_model_prunes_into_a_valid_smaller_runnable_model(name, shapes):
    path = ZOO / name / "model.onnx"
    if not path.exists():
        pytest.skip(f"{path} not materialized; run `python -m onnxopt.models.zoo`")
    result = onnxopt.compile(path, extra_passes=[{"name": "channel-prune", "ratio": 0.3}], save=False, profile=False, verify="off", input_shapes=shapes)
    report = result.report.artifacts["channel-prune"]
    assert report["groups_pruned"] > 5
    assert report["params_after"] < 0.8 * report["params_before"] and report["macs_after"] < report["macs_before"]
    onnx.checker.check_model(result.model)
    feeds = dict(np.load(sorted(glob.glob(str(ZOO / name / "eval" / "*.npz")))[0]))
    original = run_model(onnx.load(path), feeds)
    pruned = run_model(result.model, feeds)
    assert {k: v.shape for k, v in pruned.items()} == {k: v.shape for k, v in original.items()}
    assert all(np.isfinite(v).all() for v in pruned.values())
