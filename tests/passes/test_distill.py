"""distill: the JAX form of a graph computes what ONNX Runtime computes, and training against the
original lowers the error a pruned model makes on real samples it was not trained on."""

from __future__ import annotations

import glob
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from rich.console import Console

import onnxopt
from onnxopt import progress
from onnxopt.cli import main
from onnxopt.errors import ConfigError
from onnxopt.runtime import make_session
from tests.conftest import zoo_model
from tests.trt_models import conv_net

pytest.importorskip("jax", reason="the distill extra (jax) is not installed")

from onnxopt.passes.jax_graph import JaxGraph  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "models" / "example"


def _fashion(n: int, part: str = "calib") -> list[dict]:
    if part == "calib":
        return [dict(np.load(p)) for p in sorted((EXAMPLE / "calib").glob("*.npz"))[:n]]
    images = np.load(EXAMPLE / "eval.npz")["input"][:n]
    return [{"input": images[i : i + 1]} for i in range(len(images))]


def _jax_matches_ort(model: onnx.ModelProto, feeds: dict, atol: float) -> None:
    program = JaxGraph(model)
    assert not program.unsupported
    expected = make_session(model).run(None, feeds)
    got = program(program.params(), feeds)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(np.asarray(g), e, atol=atol, rtol=1e-4)


def test_jax_form_of_a_conv_classifier_matches_onnxruntime():
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    _jax_matches_ort(conv_net(batch=2), feeds, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,pads,bias", [(3, 1, [1, 1, 1, 1], True), (3, 2, [0, 0, 1, 1], False), (5, 2, [2, 1, 2, 1], True), (5, 1, [0, 0, 0, 0], False)])
def test_depthwise_conv_as_shifted_products_matches_onnxruntime(kernel, stride, pads, bias):
    """Depthwise Convs run as a sum of shifted, per-channel scaled slices (XLA's grouped conv is ~5x slower on CPU)."""
    rng = np.random.default_rng(kernel + stride)
    channels = 6
    weights = [onnx.numpy_helper.from_array(rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32), "w")]
    if bias:
        weights.append(onnx.numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b"))
    node = onnx.helper.make_node("Conv", ["x", *[w.name for w in weights]], ["y"], group=channels, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=pads)
    graph = onnx.helper.make_graph([node], "dw", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, channels, 11, 11])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], weights)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    _jax_matches_ort(model, {"x": rng.standard_normal((2, channels, 11, 11)).astype(np.float32)}, atol=1e-5)


def test_jax_form_of_minilm_matches_onnxruntime():
    """A real BERT export at opset 14: decomposed LayerNorm and GELU, attention mask arithmetic, shape ops."""
    path, _, eval_dir = zoo_model("minilm")
    feeds = dict(np.load(sorted(glob.glob(str(Path(eval_dir) / "*.npz")))[0]))
    _jax_matches_ort(onnx.load(path), feeds, atol=1e-4)


def test_jax_form_of_efficientnet_lite0_matches_onnxruntime():
    """Real export with BatchNormalization kept, explicit Pad, ReLU6 as Clip."""
    path, calib_dir, _ = zoo_model("efficientnet_lite0")
    feeds = dict(np.load(sorted(glob.glob(str(Path(calib_dir) / "*.npz")))[0]))
    _jax_matches_ort(onnx.load(path), feeds, atol=1e-3)


def test_trainable_weights_leave_embeddings_and_shape_operands_alone():
    path, _, _ = zoo_model("minilm")
    program = JaxGraph(onnx.load(path))
    gathered = {n.input[0] for n in program.model.graph.node if n.op_type == "Gather"}
    reshaped = {n.input[1] for n in program.model.graph.node if n.op_type == "Reshape"}
    assert program.trainable and not (set(program.trainable) & (gathered | reshaped))


@pytest.fixture(scope="module")
def pruned_pair():
    """The example CNN pruned to half its MACs without the layer-wise refits (so much error is left
    to repair), without and with 300 distillation steps."""
    calib = _fashion(64)
    prune = {"name": "channel-prune", "flops_target": 0.5, "reconstruct": False}
    kwargs = dict(target="ort-fp32", calibration=calib, save=False, profile=False, verify="off")
    plain = onnxopt.compile(str(EXAMPLE / "fashion_cnn.onnx"), extra_passes=[prune], **kwargs)
    distilled = onnxopt.compile(str(EXAMPLE / "fashion_cnn.onnx"), extra_passes=[prune, {"name": "distill", "steps": 300, "lr": 1e-3}], **kwargs)
    return plain, distilled


def _error(original: onnx.ModelProto, model: onnx.ModelProto, feeds: list[dict]) -> float:
    a, b = make_session(original), make_session(model)
    ref = np.concatenate([a.run(None, f)[0] for f in feeds])
    out = np.concatenate([b.run(None, f)[0] for f in feeds])
    return float(np.sum((ref - out) ** 2) / np.sum(ref**2))


def test_distillation_keeps_the_structure_and_lowers_the_error_on_unseen_test_images(pruned_pair):
    plain, distilled = pruned_pair
    report = distilled.report.artifacts["distill"]
    assert report["changed"] and report["held_out_error_after"] < report["held_out_error_before"]
    assert report["samples"] == 56 and report["held_out_samples"] == 8 and report["best_step"] > 0
    # structure: the same operators and weight shapes as the pruned model; only values changed
    assert [n.op_type for n in distilled.model.graph.node] == [n.op_type for n in plain.model.graph.node]
    assert {t.name: tuple(t.dims) for t in distilled.model.graph.initializer} == {t.name: tuple(t.dims) for t in plain.model.graph.initializer}
    # numbers: 500 real test images, none of them calibration images
    original = onnx.load(EXAMPLE / "fashion_cnn.onnx")
    test = _fashion(500, "eval")
    before, after = _error(original, plain.model, test), _error(original, distilled.model, test)
    assert before > 0.3 and after < 0.1 * before


def test_training_that_only_hurts_held_out_samples_leaves_the_weights_as_they_were():
    """With the refits the pruned CNN is already close (relative error 0.002); 56 samples at a large
    step size only overfit, so early stopping keeps the refit weights."""
    kwargs = dict(target="ort-fp32", calibration=_fashion(64), save=False, profile=False, verify="off")
    prune = {"name": "channel-prune", "flops_target": 0.5}
    plain = onnxopt.compile(str(EXAMPLE / "fashion_cnn.onnx"), extra_passes=[prune], **kwargs)
    terminal = io.StringIO()
    progress.use_console(Console(file=terminal, force_terminal=True, width=100))
    try:
        result = onnxopt.compile(str(EXAMPLE / "fashion_cnn.onnx"), extra_passes=[prune, {"name": "distill", "steps": 20, "lr": 1e-2, "eval_every": 10}], **kwargs)
    finally:
        progress.use_console(None)
    assert "distill · Adam steps" in terminal.getvalue()  # long runs show where they are
    report = result.report.artifacts["distill"]
    assert not report["changed"] and report["held_out_error_after"] == report["held_out_error_before"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in plain.model.graph.initializer}
    for t in result.model.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), weights[t.name])


def test_an_operator_without_a_jax_form_skips_the_pass_with_a_warning():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["m"]), onnx.helper.make_node("Softsign", ["m"], ["y"])]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32)} for i in range(32)]
    result = onnxopt.compile(model, target="ort-fp32", calibration=calib, extra_passes=[{"name": "distill", "steps": 5}], save=False, profile=False)
    assert any("distill: skipped, no JAX form for operator(s) Softsign" in w for w in result.report.warnings)


def test_without_jax_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(ConfigError, match=r"onnxopt\[distill\]"):
        JaxGraph(conv_net(batch=1))


def test_cli_distill_flag_adds_the_pass_after_pruning(tmp_path):
    out = tmp_path / "pruned.onnx"
    result = CliRunner().invoke(main, [
        "compile", str(EXAMPLE / "fashion_cnn.onnx"), "--target", "ort-fp32", "--calib", str(EXAMPLE / "calib"),
        "--prune-flops", "0.5", "--distill", "50", "-o", str(out), "--no-profile", "--report", str(tmp_path / "r.json"), "-q",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    names = [p["name"] for p in report["passes"]]
    assert report["artifacts"]["distill"]["held_out_samples"] == 8
    assert names.index("channel-prune") < names.index("distill")
    onnx.checker.check_model(onnx.load(out))
