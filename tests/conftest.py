"""Shared fixtures: tiny models built in code, and a helper to compare a model before and after."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.inputs import input_specs, random_feeds
from onnxopt.runtime import run_model


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="test"):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def assert_same_outputs(original: onnx.ModelProto, optimized: onnx.ModelProto, rtol=1e-4, atol=1e-5, seed=0, shapes=None):
    feeds = random_feeds(input_specs(original, shapes or {}), seed=seed)
    expected = run_model(original, feeds)
    actual = run_model(optimized, feeds)
    assert set(expected) == set(actual)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol, err_msg=name)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.fixture
def skip_layernorm_faster(monkeypatch):
    """ONNX Runtime's SkipLayerNormalization taken as the faster form here. The fusion measures it per
    machine (passes/fusion/residual_norm.py); tests of the fused form must not depend on that."""
    import onnxopt.passes.fusion.skip_layernorm as skip_layernorm

    monkeypatch.setattr(skip_layernorm, "skip_layernorm_is_faster", lambda hidden: True)


@pytest.fixture
def skip_layernorm_slower(monkeypatch):
    """The other measurement: Sum + LayerNormalization taken as the faster form."""
    import onnxopt.passes.fusion.skip_layernorm as skip_layernorm

    monkeypatch.setattr(skip_layernorm, "skip_layernorm_is_faster", lambda hidden: False)


@pytest.fixture
def conv_model():
    """Conv with a Constant-node weight, Identity, Dropout, and two identical bias initializers."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["c"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"]),
        helper.make_node("Add", ["d", "b1"], ["a"]),
        helper.make_node("Mul", ["a", "b2"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor("x", ["N", 3, 8, 8])],
        [tensor("y", ["N", 4, 8, 8])],
        [init("b1", np.full((1, 4, 1, 1), 0.5, np.float32)), init("b2", np.full((1, 4, 1, 1), 0.5, np.float32))],
    )


ZOO_MODELS = ("efficientnet_lite0", "minilm", "ppocr_det", "ppocr_rec", "ppocr_cls")


def zoo_model(name: str):
    """(model path, calib dir, eval dir) of a materialized zoo model, or skip the test with the reason."""
    from onnxopt.errors import OnnxoptError
    from onnxopt.models.zoo import load_zoo_model

    try:
        return load_zoo_model(name)
    except OnnxoptError as exc:
        pytest.skip(str(exc))
