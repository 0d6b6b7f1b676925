"""The TensorRT readiness checker on crafted graphs: each rule fires where it must and only there."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxopt.backends.trt_check import SUPPORTED_OPS, UNSUPPORTED_OPS, check_model
from onnxopt.cli import main
from onnxopt.errors import ConfigError
from onnxopt.inputs import parse_shape_ranges
from tests.conftest import init, make_model, tensor
from tests.trt_models import conv_net, qdq_conv


def codes(report, severity=None):
    return sorted({f.code for f in report.findings if severity is None or f.severity == severity})


def test_clean_models_have_no_findings():
    assert check_model(conv_net(batch=1)).findings == []
    report = check_model(qdq_conv(), precision="int8")
    assert report.ok and report.findings == [], report.summary()


def test_supported_and_unsupported_lists_do_not_overlap():
    assert not SUPPORTED_OPS & UNSUPPORTED_OPS
    assert {"Conv", "QuantizeLinear", "LayerNormalization"} <= SUPPORTED_OPS


def test_unsupported_op_is_an_error_with_a_fix():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Det", ["r"], ["y"], name="det")],
        [tensor("x", [2, 3, 3])],
        [tensor("y", [2])],
    )
    report = check_model(model)
    assert codes(report, "error") == ["unsupported-op"]
    finding = report.errors[0]
    assert finding.node == "det" and "Det" in finding.message and "plugin" in finding.fix


def test_custom_domain_op_is_an_error():
    graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft", name="ms_gelu")], "g", [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert codes(check_model(model), "error") == ["custom-domain-op"]


def test_int64_weight_out_of_int32_range_warns_but_slice_sentinels_do_not():
    big = np.array([2**40, 3], np.int64)
    model = make_model(
        [
            helper.make_node("Add", ["x", "big"], ["a"], name="add_big"),
            helper.make_node("Slice", ["a", "starts", "ends"], ["y"], name="slice"),
        ],
        [tensor("x", [2], TensorProto.INT64)],
        [tensor("y", [1], TensorProto.INT64)],
        [init("big", big), init("starts", np.array([1], np.int64)), init("ends", np.array([2**63 - 1], np.int64))],
    )
    report = check_model(model)
    int64 = [f for f in report.findings if f.code == "int64-weight"]
    assert [f.node for f in int64] == ["big"] and int64[0].severity == "warning"
    assert report.ok


def test_asymmetric_qdq_is_an_error():
    report = check_model(qdq_conv(zero_point=3), precision="int8")
    assert "qdq-asymmetric" in codes(report, "error")
    assert any("zero point 0" in f.fix for f in report.errors)


def test_uint8_qdq_is_an_error():
    report = check_model(qdq_conv(qtype=np.uint8, zero_point=0))
    assert codes(report, "error") == ["qdq-type"]


def test_per_channel_weight_on_the_wrong_axis_is_an_error():
    report = check_model(qdq_conv(weight_axis=1))
    errors = [f for f in report.errors if f.code == "qdq-axis"]
    assert errors and "axis 0" in errors[0].fix and errors[0].node == "dq_w"


def test_per_channel_activation_quantization_is_an_error():
    report = check_model(qdq_conv(per_channel_activation=True))
    assert "qdq-per-channel-activation" in codes(report, "error")


def test_quantize_producing_a_graph_output_is_an_error():
    report = check_model(qdq_conv(q_as_output=True))
    assert [(f.node, f.severity) for f in report.findings if f.code == "qdq-output"] == [("q_out", "error")]


def test_qdq_pair_ending_at_the_output_is_a_warning():
    report = check_model(qdq_conv(qdq_on_output=True))
    assert report.ok
    assert [(f.node, f.severity) for f in report.findings if f.code == "qdq-output"] == [("dq_out", "warning")]


def test_quantized_bias_is_an_error_naming_the_fix():
    model = qdq_conv()
    bias = onnx.numpy_helper.from_array(np.arange(4, dtype=np.int32), "bq")
    scale = onnx.numpy_helper.from_array(np.full(4, 1e-3, np.float32), "bs")
    model.graph.initializer.extend([bias, scale])
    model.graph.node.insert(2, helper.make_node("DequantizeLinear", ["bq", "bs"], ["bd"], axis=0, name="dq_bias"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input.append("bd")
    onnx.checker.check_model(model)
    report = check_model(model)
    assert [(f.code, f.node) for f in report.errors] == [("qdq-type", "dq_bias")]
    assert "QuantizeBias=False" in report.errors[0].fix


def test_quantize_without_dequantize_is_an_error():
    assert "qdq-unpaired" in codes(check_model(qdq_conv(unpaired=True)), "error")


def test_int8_precision_without_qdq_is_an_error():
    model = conv_net(batch=1)
    assert check_model(model, precision="fp16").ok
    assert codes(check_model(model, precision="int8"), "error") == ["no-qdq"]


def test_dynamic_input_needs_a_profile():
    model = conv_net(batch="N")
    report = check_model(model)
    assert codes(report, "error") == ["dynamic-shape"]
    assert "--input-shape x=1x3x8x8:8x3x8x8:32x3x8x8" in report.errors[0].fix
    profiled = check_model(model, parse_shape_ranges(["x=1x3x8x8:4x3x8x8:16x3x8x8"]))
    assert profiled.findings == [] and profiled.profiles == {"x": [[1, 3, 8, 8], [4, 3, 8, 8], [16, 3, 8, 8]]}


@pytest.mark.parametrize(
    "item, message",
    [
        ("x=1x3x8x8:4x3x8x8", "min:opt:max"),
        ("x=4x3x8x8:1x3x8x8:16x3x8x8", "min <= opt <= max"),
        ("x=1x3x9x9:1x3x9x9:2x3x9x9", "fixed at 8"),
        ("nope=1x3x8x8", "unknown input"),
        ("x=1x3x8", "rank 4"),
    ],
)
def test_bad_profiles_are_user_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        check_model(conv_net(), parse_shape_ranges([item]))


def test_cli_exit_codes_and_json(tmp_path):
    clean, broken = tmp_path / "clean.onnx", tmp_path / "dynamic.onnx"
    onnx.save(conv_net(batch=1), str(clean))
    onnx.save(conv_net(batch="N"), str(broken))
    runner = CliRunner()
    ok = runner.invoke(main, ["check-trt", str(clean)])
    assert ok.exit_code == 0 and "clean" in ok.output
    bad = runner.invoke(main, ["check-trt", str(broken), "--json"])
    assert bad.exit_code == 1
    data = json.loads(bad.output)
    assert data["ok"] is False and data["findings"][0]["code"] == "dynamic-shape"
    fixed = runner.invoke(main, ["check-trt", str(broken), "--input-shape", "x=1x3x8x8:2x3x8x8:4x3x8x8"])
    assert fixed.exit_code == 0, fixed.output
    missing = runner.invoke(main, ["check-trt", str(tmp_path / "absent.onnx")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    wrong = runner.invoke(main, ["check-trt", str(broken), "--input-shape", "x=1x3x8x8:2x3x8x8"])
    assert wrong.exit_code == 2
