"""convert-float16: which nodes turn float16, which stay float32 and why, and the numbers in ORT."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import onnxopt
from onnxopt.graphs import export_model, import_graph
from onnxopt.pipeline import PassContext, get_pass
from onnxopt.runtime import run_model
from tests.conftest import init, make_model, tensor
from tests.trt_models import conv_net

FP16 = onnx.TensorProto.FLOAT16


def convert(model, calibration=None, **options):
    graph = import_graph(model)
    ctx = PassContext(calibration=calibration)
    get_pass("shape-inference")().run(graph, ctx)
    result = get_pass("convert-float16")(**options).run(graph, ctx)
    out = export_model(graph, model)
    onnx.checker.check_model(out)
    return out, result, ctx


def node_types(model):
    """op -> float16 or float32, read from the type of each node's first output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    return {n.name or n.op_type: types.get(n.output[0]) for n in model.graph.node}


def test_conv_net_runs_in_float16_with_float32_interface():
    model = conv_net(batch=1)
    out, result, _ = convert(model)
    assert result.changed and result.stats["converted_nodes"] == 7
    assert [n.op_type for n in out.graph.node] == ["Cast", "Conv", "Relu", "Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm", "Cast"]
    assert all(i.data_type == FP16 for i in out.graph.initializer)
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    expected, actual = run_model(model, feeds)["y"], run_model(out, feeds)["y"]
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(actual, expected)  # it really computed in float16
    assert result.stats["fidelity"]["min_cosine"] > 0.999


def block_model():
    """x -> Mul -> ReduceMean(keepdims) -> Add -> Resize(scales) -> y."""
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["m"], name="mul"),
        helper.make_node("ReduceMean", ["m"], ["r"], axes=[3], keepdims=1, name="reduce"),
        helper.make_node("Add", ["r", "m"], ["a"], name="add"),
        helper.make_node("Resize", ["a", "", "scales"], ["y"], mode="nearest", name="resize"),
    ]
    inits = [init("k", np.float32(0.5)), init("scales", np.array([1, 1, 2, 2], np.float32))]
    return make_model(nodes, [tensor("x", [1, 2, 4, 4])], [tensor("y", [1, 2, 8, 8])], inits, opset=17)


def test_block_list_and_resize_scales_stay_float32():
    model = block_model()
    out, result, _ = convert(model)
    types = node_types(out)
    assert types["reduce"] == onnx.TensorProto.FLOAT
    assert types["mul"] == types["add"] == types["resize"] == FP16
    scales = next(i for i in out.graph.initializer if i.name == "scales")
    assert scales.data_type == onnx.TensorProto.FLOAT
    assert result.stats["kept_float32"]["block_list"] == 1
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_model(out, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-2, atol=1e-2)


def overflow_model():
    """x * 300, squared, * 1e-4, Neg: the square passes float16's 65504 for |x| > 0.85."""
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["m"], name="scale_up"),
        helper.make_node("Mul", ["m", "m"], ["sq"], name="square"),
        helper.make_node("Mul", ["sq", "small"], ["s"], name="scale_down"),
        helper.make_node("Neg", ["s"], ["y"], name="neg"),
    ]
    inits = [init("k", np.float32(300.0)), init("small", np.float32(1e-4))]
    return make_model(nodes, [tensor("x", [1, 16])], [tensor("y", [1, 16])], inits)


def calibration_feeds():
    rng = np.random.default_rng(7)
    return [{"x": rng.uniform(-1, 1, (1, 16)).astype(np.float32)} for _ in range(4)]


def test_values_that_overflow_float16_on_calibration_data_stay_float32():
    model = overflow_model()
    feeds = calibration_feeds()
    out, result, _ = convert(model, calibration=feeds)
    types = node_types(out)
    assert types["square"] == types["scale_down"] == onnx.TensorProto.FLOAT
    assert types["scale_up"] == types["neg"] == FP16
    assert result.stats["kept_float32"]["overflow"] == 2 and result.stats["data"] == "calibration"
    for feed in feeds:
        np.testing.assert_allclose(run_model(out, feed)["y"], run_model(model, feed)["y"], rtol=5e-3, atol=1e-3)
    assert result.stats["fidelity"]["max_rel_error"] < 5e-3
    # Negative control: without the range check the square turns float16 and overflows to inf
    # (seen by the float16 emulation; ORT's CPU provider would compute it in float32).
    unguarded, loose, _ = convert(model, calibration=feeds, overflow_limit=1e30)
    assert node_types(unguarded)["square"] == FP16
    assert loose.stats["fidelity"]["max_rel_error"] > 0.1


def test_constants_that_flush_to_zero_keep_their_node_float32():
    nodes = [helper.make_node("Add", ["x", "eps"], ["a"], name="add_eps"), helper.make_node("Sqrt", ["a"], ["y"], name="sqrt")]
    model = make_model(nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])], [init("eps", np.float32(1e-12))])
    out, result, _ = convert(model)
    types = node_types(out)
    assert types["add_eps"] == onnx.TensorProto.FLOAT and types["sqrt"] == FP16
    assert result.stats["kept_float32"]["constant_range"] == 1


def test_model_without_float_math_is_unchanged():
    nodes = [helper.make_node("Add", ["x", "one"], ["y"])]
    model = make_model(nodes, [tensor("x", [3], onnx.TensorProto.INT64)], [tensor("y", [3], onnx.TensorProto.INT64)], [init("one", np.ones(3, np.int64))])
    out, result, _ = convert(model)
    assert not result.changed and [n.op_type for n in out.graph.node] == ["Add"]


def test_ort_fp16_target_reports_fidelity(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(conv_net(batch=1), str(path))
    rng = np.random.default_rng(11)
    calibration = [{"x": rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    result = onnxopt.compile(str(path), target="ort-fp16", calibration=calibration, profile=False, output=tmp_path / "net.ort-fp16.onnx")
    assert result.output_path == tmp_path / "net.ort-fp16.onnx" and result.output_path.exists()
    record = next(p for p in result.report.passes if p.name == "convert-float16")
    assert record.changed and not record.exact and record.stats["data"] == "calibration"
    verification = result.report.verification
    assert verification["exact"] is False and verification["min_cosine"] > 0.999
    assert result.report.artifacts["float16"]["converted_nodes"] == 7
