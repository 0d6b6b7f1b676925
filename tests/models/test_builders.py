"""Every builder yields a valid model that onnxruntime runs, and the committed example still scores."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxopt.models
from onnxopt.models.builders import BUILDERS, transformer_block

EXAMPLE = Path(onnxopt.models.__file__).resolve().parent / "example"

# Small inputs keep the ResNets fast; their weights do not depend on input_size.
KWARGS = {name: {"input_size": 32, "num_classes": 10} for name in BUILDERS if name.endswith("_shaped")}
SYMBOLIC = {"batch": 2, "seq": 5}
EXPECTED = {
    "conv_bn_relu": {"output": (1, 8, 16, 16)},
    "residual_net": {"logits": (1, 10)},
    "transformer_block": {"y": (1, 8, 32)},
    "dynamic_dims_model": {"y": (2, 5, 8)},
    "constant_weights_model": {"output": (1, 8, 16, 16)},
    "if_subgraph_model": {"y": (2, 4)},
    "resnet18_shaped": {"logits": (1, 10)},
    "resnet50_shaped": {"logits": (1, 10)},
    "mobilenet_v2_shaped": {"logits": (1, 10)},
    "mobilenet_v3_shaped": {"logits": (1, 10)},
}


def run(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([SYMBOLIC.get(d, d) for d in i.shape]).astype(np.float32)
             for i in sess.get_inputs()}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def test_every_builder_has_expected_shapes():
    assert set(EXPECTED) == set(BUILDERS)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builder_checks_and_runs(name):
    model = BUILDERS[name](**KWARGS.get(name, {}))
    onnx.checker.check_model(model, full_check=True)
    outputs = run(model)
    assert {k: v.shape for k, v in outputs.items()} == EXPECTED[name]
    assert all(np.isfinite(v).all() for v in outputs.values())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builder_is_deterministic(name):
    if name.endswith("_shaped"):
        pytest.skip("large weights; same code path as the small builders")
    assert BUILDERS[name]().SerializeToString() == BUILDERS[name]().SerializeToString()


def test_transformer_block_opset18_matches_opset14():
    """ReduceMean's axes move from attribute to input at opset 18; the numbers must not change."""
    old, new = run(transformer_block(opset=14))["y"], run(transformer_block(opset=18))["y"]
    np.testing.assert_allclose(old, new, rtol=1e-5, atol=1e-5)


def test_decomposed_chains_are_present():
    ops = {n.op_type for n in transformer_block().graph.node}
    assert {"ReduceMean", "Pow", "Sqrt", "Erf", "Softmax", "Reshape", "Transpose"} <= ops
    ops = [n.op_type for n in BUILDERS["constant_weights_model"]().graph.node]
    assert ops.count("Constant") == 4 and "Identity" in ops and "Dropout" in ops


def test_if_model_takes_both_branches():
    model = BUILDERS["if_subgraph_model"]()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    weight = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "proj.weight"))
    branches = {a.name: a.g for a in next(n for n in model.graph.node if n.op_type == "If").attribute}
    then_c, else_c = (numpy_helper.to_array(branches[b].node[0].attribute[0].t) for b in ("then_branch", "else_branch"))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], np.maximum(x @ weight * then_c, 0), rtol=1e-6)
    np.testing.assert_allclose(sess.run(None, {"x": -x})[0], np.maximum(-x @ weight + else_c, 0), rtol=1e-6)


def test_example_model_runs_on_calibration_sample():
    sess = ort.InferenceSession(str(EXAMPLE / "fashion_cnn.onnx"), providers=["CPUExecutionProvider"])
    calib = sorted((EXAMPLE / "calib").glob("*.npz"))
    assert len(calib) == 64
    with np.load(calib[0]) as sample:
        assert sample["input"].shape == (1, 1, 28, 28) and sample["input"].dtype == np.float32
        assert sess.run(["logits"], {"input": sample["input"]})[0].shape == (1, 10)


def test_example_model_accuracy_on_eval_set():
    sess = ort.InferenceSession(str(EXAMPLE / "fashion_cnn.onnx"), providers=["CPUExecutionProvider"])
    with np.load(EXAMPLE / "eval.npz") as data:
        x = data["input"]
    labels = np.load(EXAMPLE / "eval_labels.npy")
    assert x.shape == (500, 1, 28, 28) and labels.shape == (500,) and labels.dtype == np.int64
    accuracy = (sess.run(["logits"], {"input": x})[0].argmax(1) == labels).mean()
    assert accuracy > 0.8
