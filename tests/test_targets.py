"""Targets as objects: capabilities follow the recipe's backend and precision, never its name."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxopt
from onnxopt.cli import main
from onnxopt.errors import ConfigError
from onnxopt.models.builders import transformer_block
from onnxopt.pipeline import PassContext
from onnxopt.targets import Capabilities, Target, list_targets, target_of
from tests.conftest import zoo_model
from tests.passes.quantize.qmodels import conv_net, images

EXACT_FUSION = '\n[[passes]]\ninclude = "exact-fusion"\n'


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def graph_of(model: onnx.ModelProto) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(n.domain, n.op_type, tuple(n.input)) for n in model.graph.node]


def test_capabilities_follow_the_backend_and_str_is_the_name():
    ort, trt = target_of("ort-int8"), target_of("trt-int8")
    assert (ort.backend, ort.precision, ort.contrib_ops, ort.qdq_rules) == ("ort", "int8", True, "ort")
    assert (trt.backend, trt.precision, trt.contrib_ops, trt.qdq_rules) == ("tensorrt", "int8", False, "trt")
    assert str(trt) == "trt-int8" and f"{ort}" == "ort-int8"
    custom = Target.from_recipe({"backend": "tensorrt", "precision": "fp16"}, "edge")
    assert custom.name == "edge" and custom.capabilities == Capabilities(contrib_ops=False, qdq_rules="trt")


def test_capabilities_can_be_overridden_and_are_checked():
    target = Target.from_recipe({"backend": "ort", "capabilities": {"contrib_ops": False}}, "plain-ort")
    assert target.capabilities == Capabilities(contrib_ops=False, qdq_rules="ort")
    with pytest.raises(ConfigError, match="valid keys"):
        Target.from_recipe({"capabilities": {"gpu": True}}, "x")
    with pytest.raises(ConfigError, match="qdq_rules"):
        Target.from_recipe({"capabilities": {"qdq_rules": "tflite"}}, "x")


def test_pass_context_takes_a_name_or_a_target():
    assert PassContext(target="trt-fp16").target == target_of("trt-fp16")
    assert PassContext().target.name == "ort-fp32"
    edge = Target.from_recipe({"backend": "tensorrt"}, "edge")
    assert PassContext(target=edge).target is edge
    with pytest.raises(ConfigError, match="unknown target"):
        PassContext(target="no-such-target")


def test_custom_tensorrt_recipe_gets_tensorrt_qdq_placement(tmp_path):
    """edge-int8.toml names no built-in target, yet its backend makes the placement TensorRT's."""
    recipe = write(tmp_path, "edge-int8.toml", 'backend = "tensorrt"\nprecision = "int8"\n' + EXACT_FUSION
                   + '\n[[passes]]\nname = "quantize-int8"\nlatency_aware = false\n')
    model, data = conv_net(), images(16)
    edge = onnxopt.compile(model, recipe=recipe, calibration=data, profile=False, emit="onnx", verify="off")
    trt = onnxopt.compile(model, target="trt-int8", calibration=data, profile=False, emit="onnx", verify="off")
    ort = onnxopt.compile(model, target="ort-int8", calibration=data, profile=False, emit="onnx", verify="off",
                          overrides=["quantize-int8.latency_aware=false"])
    assert edge.report.target == "edge-int8"
    assert edge.report.artifacts["quantize"]["rules"] == "trt"
    assert graph_of(edge.model) == graph_of(trt.model) != graph_of(ort.model)
    zero_points = [n.input[2] for n in edge.model.graph.node if n.op_type == "QuantizeLinear"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in edge.model.graph.initializer}
    assert zero_points and all(inits[z].dtype == np.int8 and not inits[z].any() for z in zero_points)


@pytest.mark.parametrize("header", ["", 'name = "my-fp32"\n'])
def test_custom_ort_recipe_builds_the_same_graph_as_ort_fp32(tmp_path, header, skip_layernorm_faster):
    """my-fp32.toml (named or not) decides by its backend, not its name: ORT's fusions, contrib ops included."""
    recipe = write(tmp_path, "my-fp32.toml", header + 'backend = "ort"\n' + EXACT_FUSION)
    model = transformer_block()
    mine = onnxopt.compile(model, recipe=recipe, profile=False)
    builtin = onnxopt.compile(model, target="ort-fp32", profile=False)
    assert mine.report.target == "my-fp32"
    assert graph_of(mine.model) == graph_of(builtin.model)
    assert {"SkipLayerNormalization", "Gelu"} <= {n.op_type for n in mine.model.graph.node if n.domain == "com.microsoft"}


def test_unnamed_tensorrt_recipe_uses_standard_ops_only(tmp_path):
    recipe = write(tmp_path, "my-trt.toml", 'backend = "tensorrt"\n' + EXACT_FUSION)
    result = onnxopt.compile(transformer_block(), recipe=recipe, profile=False, emit="onnx")
    builtin = onnxopt.compile(transformer_block(), target="trt-fp32", profile=False, emit="onnx")
    assert result.report.target == "my-trt"
    assert not any(n.domain == "com.microsoft" for n in result.model.graph.node)
    assert graph_of(result.model) == graph_of(builtin.model)


@pytest.mark.real
def test_custom_ort_recipe_matches_ort_fp32_on_minilm(tmp_path, skip_layernorm_faster):
    path, _, _ = zoo_model("minilm")
    recipe = write(tmp_path, "my-fp32.toml", 'name = "my-fp32"\nbackend = "ort"\n' + EXACT_FUSION)
    mine = onnxopt.compile(path, recipe=recipe, profile=False, verify="off")
    builtin = onnxopt.compile(path, target="ort-fp32", profile=False, verify="off")
    assert graph_of(mine.model) == graph_of(builtin.model)
    assert any(n.op_type == "SkipLayerNormalization" for n in mine.model.graph.node)


def test_targets_command_lists_builtins_and_recipe_files(tmp_path):
    recipe = write(tmp_path, "edge-int8.toml", 'backend = "tensorrt"\nprecision = "int8"\ndescription = "edge box"\n')
    result = CliRunner().invoke(main, ["targets", "--recipe", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert {"ort-fp32", "ort-int8", "trt-int8", "edge-int8"} <= set(rows)
    assert rows["edge-int8"]["capabilities"] == {"contrib_ops": False, "qdq_rules": "trt"}
    assert rows["ort-fp32"]["available"] is True
    text = CliRunner().invoke(main, ["targets", "--recipe", str(recipe)])
    assert text.exit_code == 0 and "edge-int8" in text.output and "tensorrt/int8" in text.output
    assert [t.name for t in list_targets()][:1] == ["ort-fp16"]
