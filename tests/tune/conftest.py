"""A small real tuning problem: the committed Fashion-MNIST example CNN, real calibration images,
a slice of its real labeled test images as tuning data (disjoint from the train-set calibration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "models" / "example"


@pytest.fixture(scope="session")
def problem(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tune-problem")
    images = np.load(EXAMPLE / "eval.npz")["input"][:120]
    labels = np.load(EXAMPLE / "eval_labels.npy")[:120]
    np.savez(folder / "data.npz", input=images)
    np.save(folder / "labels.npy", labels)
    calib = np.concatenate([np.load(p)["input"] for p in sorted((EXAMPLE / "calib").glob("*.npz"))[:32]])
    np.savez(folder / "calib.npz", input=calib)
    return {"model": str(EXAMPLE / "fashion_cnn.onnx"), "calib": str(folder / "calib.npz"),
            "data": str(folder / "data.npz"), "labels": str(folder / "labels.npy"), "folder": str(folder)}


@pytest.fixture(scope="session")
def small_tune(problem, tmp_path_factory):
    """One real search of three trials, shared by the result, JSON and HTML tests."""
    import onnxopt

    out = tmp_path_factory.mktemp("tune-run") / "best.onnx"
    result = onnxopt.tune(problem["model"], calibration=problem["calib"], data=problem["data"], labels=problem["labels"],
                          max_drop=2.0, targets=("ort-int8", "ort-fp32"), trials=3, profile_iters=8, subset=0,
                          output=out, show_progress=False)
    return result, out
