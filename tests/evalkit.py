"""Tiny classifier models and data folders for the evaluation, gate and report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.conftest import init, make_model, tensor

FEATURES, CLASSES = 8, 10


def classifier(weight: np.ndarray, bias: np.ndarray, *, extra_outputs: bool = False) -> onnx.ModelProto:
    """x [N, 8] -> logits [N, 10]; with `extra_outputs`, also a rank-3 tensor and an int argmax."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["logits"])]
    outputs = [tensor("logits", ["N", CLASSES])]
    inits = [init("w", weight.astype(np.float32)), init("b", bias.astype(np.float32))]
    if extra_outputs:
        nodes += [
            helper.make_node("Tanh", ["x"], ["t"]),
            helper.make_node("Reshape", ["t", "shape"], ["features"]),
            helper.make_node("ArgMax", ["logits"], ["pred"], axis=1, keepdims=0),
        ]
        outputs += [tensor("features", ["N", 2, 4]), tensor("pred", ["N"], TensorProto.INT64)]
        inits.append(init("shape", np.array([-1, 2, 4], np.int64)))
    return make_model(nodes, [tensor("x", ["N", FEATURES])], outputs, inits)


def weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((FEATURES, CLASSES)), rng.standard_normal(CLASSES) * 0.1


def samples(n: int, seed: int = 1, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, batch, FEATURES)).astype(np.float32)


def write_folder(folder: Path, xs: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(xs):
        np.savez(folder / f"{i:03d}.npz", x=x)
    return folder


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
