"""The rule framework (fixed point, subgraphs, options) and the ort-fp32 target end to end."""

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

import onnxopt
from onnxopt.cli import main
from onnxopt.errors import ConfigError
from onnxopt.recipes import load_target
from tests.conftest import assert_same_outputs
from tests.passes.fusion.fusion_helpers import floats, fuse, init, make_model, node, ops, tensor
from tests.passes.fusion.test_fusion_batchnorm import bn, bn_inits


def exported_cnn():
    """What a TF-style exporter writes: Pad, bias-less Conv, BN, Clip, a Div by a constant, and a flatten."""
    nodes = [
        node("Pad", ["x", "pads"], ["p"]),
        node("Conv", ["p", "w"], ["c"], strides=[2, 2]),
        bn("c", "b"),
        node("Clip", ["b", "lo", "hi"], ["r"]),
        node("Div", ["r", "six"], ["d"]),
        node("GlobalAveragePool", ["d"], ["g"]),
        node("Flatten", ["g"], ["f"], axis=1),
        node("MatMul", ["f", "fc"], ["m"]),
        node("Add", ["m", "fc_b"], ["y"]),
    ]
    inits = [init("pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)), init("w", floats((4, 3, 3, 3))), init("lo", np.float32(0)),
             init("hi", np.float32(6)), init("six", np.float32(6)), init("fc", floats((4, 5), 7)), init("fc_b", floats(5, 8))] + bn_inits("bn", 4)
    return make_model(nodes, [tensor("x", ["N", 3, 9, 9])], [tensor("y", ["N", 5])], inits)


def test_fusion_reaches_a_joint_fixed_point():
    model = exported_cnn()
    out, result = fuse(model)
    assert ops(out) == ["Conv", "Clip", "Mul", "GlobalAveragePool", "Flatten", "Gemm"]
    for seed in range(3):
        assert_same_outputs(model, out, seed=seed)
    again, second = fuse(out)
    assert not second.changed and ops(again) == ops(out)


def test_fusion_skip_option_and_unknown_names():
    out, _ = fuse(exported_cnn(), skip=("batchnorm", "DivByConstantToMul"))
    assert "BatchNormalization" in ops(out) and "Div" in ops(out)
    with pytest.raises(ConfigError, match="unknown theme or rule"):
        fuse(exported_cnn(), skip=("no-such-theme",))


def if_model(outer_reads_inside: bool):
    """A Conv -> BN chain inside an If branch; optionally the outer conv's output is read inside too."""
    inner = [node("Conv", ["x", "w"], ["ic"]), bn("ic", "ib")]
    then_out = "ib"
    if outer_reads_inside:
        inner.append(node("Add", ["ib", "oc"], ["isum"]))
        then_out = "isum"
    then_graph = helper.make_graph(inner, "then", [], [tensor(then_out, [1, 4, 4, 4])])
    else_nodes = [node("Neg", ["oc"], ["e"])] if outer_reads_inside else [node("Conv", ["x", "w3"], ["e0"]), node("Neg", ["e0"], ["e"])]
    else_graph = helper.make_graph(else_nodes, "else", [], [tensor("e", [1, 4, 4, 4])])
    nodes = [
        node("Conv", ["x", "w2"], ["oc"]), bn("oc", "ob", prefix="bn2"),
        node("ReduceSum", ["x"], ["s"], keepdims=0), node("Greater", ["s", "zero"], ["cond"]),
        node("If", ["cond"], ["branch"], then_branch=then_graph, else_branch=else_graph),
        node("Add", ["branch", "ob"], ["y"]),
    ]
    inits = [init("w", floats((4, 3, 3, 3))), init("w2", floats((4, 3, 3, 3), 5)), init("w3", floats((4, 3, 3, 3), 6)), init("zero", np.float32(0))] + bn_inits("bn", 4) + bn_inits("bn2", 4, seed=11)
    return make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 4, 4, 4])], inits)


def test_rules_apply_inside_subgraphs():
    model = if_model(outer_reads_inside=False)
    out, result = fuse(model, "fold-batchnorm")
    assert result.stats["FoldConvBatchNorm"] == 2 and "BatchNormalization" not in ops(out)
    then_ops = [n.op_type for n in out.graph.node[[n.op_type for n in out.graph.node].index("If")].attribute[0].g.node]
    assert "BatchNormalization" not in then_ops
    for seed in range(4):
        assert_same_outputs(model, out, seed=seed)


def test_a_tensor_read_inside_a_subgraph_is_not_folded_away():
    model = if_model(outer_reads_inside=True)
    out, _ = fuse(model, "fold-batchnorm")
    assert ops(out).count("BatchNormalization") == 1  # the outer BN: its conv output is read in the branch
    for seed in range(4):
        assert_same_outputs(model, out, seed=seed)


def test_ort_fp32_recipe_runs_fusion_between_cleanups():
    names = [p["name"] for p in load_target("ort-fp32")["passes"]]
    assert names.index("constant-folding") < names.index("fusion") < names.index("dedup-initializers")


def test_compile_ort_fp32_end_to_end(tmp_path):
    source = tmp_path / "cnn.onnx"
    import onnx

    onnx.save(exported_cnn(), source)
    result = onnxopt.compile(source, target="ort-fp32", output=tmp_path / "out.onnx", profile=False, input_shapes={"x": (2, 3, 9, 9)})
    assert result.report.verification["ok"]
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Clip", "Mul", "GlobalAveragePool", "Flatten", "Gemm"]
    cli = CliRunner().invoke(main, ["compile", str(source), "--target", "ort-fp32", "-o", str(tmp_path / "cli.onnx"), "--no-profile"])
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "cli.onnx").exists()
