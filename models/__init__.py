"""Test and benchmark models: builders in code, the committed Fashion-MNIST example, the real zoo.

Only `builders` is imported by tests and passes; `fashion_cnn` and `zoo` are scripts that need
torch and friends, which onnxopt itself never imports. The example model ships in the wheel:

    onnxopt compile "$(python -c 'import onnxopt.models as m; print(m.example_model_path())')" --target ort-fp32
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parent / "example"


def example_model_path() -> Path:
    """The shipped Fashion-MNIST CNN; its calibration samples are in `example/calib/`, its labeled
    evaluation set in `example/eval.npz` and `example/eval_labels.npy` beside it."""
    return EXAMPLE_DIR / "fashion_cnn.onnx"
