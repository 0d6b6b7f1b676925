"""Cleanup passes: structure (what remains) and numbers (onnxruntime, before vs after)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.graphs import export_model, import_graph
from onnxopt.pipeline import PassContext, get_pass
from tests.conftest import assert_same_outputs, init, make_model, ops, tensor


def run_pass(name, model, **options):
    graph = import_graph(model)
    result = get_pass(name)(**options).run(graph, PassContext())
    out = export_model(graph, model)
    onnx.checker.check_model(out)
    return out, result


def test_constant_folding_turns_constant_nodes_into_initializers(conv_model):
    out, result = run_pass("constant-folding", conv_model)
    assert result.changed
    assert "Constant" not in ops(out)
    assert "w" in {i.name for i in out.graph.initializer}
    assert_same_outputs(conv_model, out)


def test_constant_folding_folds_static_shape_subgraph():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor("x", [2, 3, 4])],
        [tensor("y", [2, 12])],
        [init("zero", np.array(0, np.int64)), init("axes", np.array([0], np.int64)), init("minus1", np.array([-1], np.int64))],
    )
    out, result = run_pass("constant-folding", model)
    assert result.changed
    assert ops(out) == ["Reshape"]
    assert_same_outputs(model, out)


def test_constant_folding_keeps_dequantize_and_reports_unchanged_when_nothing_to_do():
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor("x", [1, 4])],
        [tensor("y", [1, 2])],
        [init("wq", np.ones((4, 2), np.int8)), init("scale", np.array(0.1, np.float32)), init("zp", np.array(0, np.int8))],
    )
    out, result = run_pass("constant-folding", model)
    assert not result.changed
    assert ops(out) == ["DequantizeLinear", "MatMul"]


def test_constant_folding_leaves_random_ops_alone():
    nodes = [
        helper.make_node("RandomNormal", [], ["r"], shape=[1, 4], seed=1.0),
        helper.make_node("Add", ["x", "r"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    out, _ = run_pass("constant-folding", model)
    assert "RandomNormal" in ops(out)


def test_remove_identity_and_dropout(conv_model):
    out, result = run_pass("remove-identity", conv_model)
    assert result.changed and result.stats["removed"] == 2
    assert "Identity" not in ops(out) and "Dropout" not in ops(out)
    assert_same_outputs(conv_model, out)


def test_remove_identity_keeps_graph_output_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    model = make_model(nodes, [tensor("x", [2])], [tensor("y", [2])])
    out, result = run_pass("remove-identity", model)
    assert result.changed
    assert ops(out) == ["Relu"] and out.graph.node[0].output[0] == "y"
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_outputs(model, out)


def test_identity_from_graph_input_to_output_stays():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [tensor("x", [2])], [tensor("y", [2])])
    out, result = run_pass("remove-identity", model)
    assert not result.changed and ops(out) == ["Identity"]


def test_dropout_in_training_mode_stays():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["y"], seed=0)]
    model = make_model(
        nodes, [tensor("x", [4]), tensor("train", [], TensorProto.BOOL)], [tensor("y", [4])], [init("ratio", np.array(0.5, np.float32))]
    )
    out, result = run_pass("remove-identity", model)
    assert not result.changed and ops(out) == ["Dropout"]


def test_dead_code_elimination_removes_unused_branch():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["unused"])]
    model = make_model(nodes, [tensor("x", [3])], [tensor("y", [3])])
    out, result = run_pass("dead-code-elimination", model)
    assert result.changed and ops(out) == ["Relu"]
    assert_same_outputs(model, out)
    again, second = run_pass("dead-code-elimination", out)
    assert not second.changed


def test_dedup_initializers_merges_identical_weights(conv_model):
    out, result = run_pass("dedup-initializers", conv_model)
    assert result.changed and result.stats["merged"] == 1
    assert len(out.graph.initializer) == 1
    assert_same_outputs(conv_model, out)


def test_dedup_keeps_different_dtypes_apart():
    nodes = [helper.make_node("Add", ["x", "a"], ["s"]), helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), helper.make_node("Add", ["s", "bf"], ["y"])]
    model = make_model(
        nodes, [tensor("x", [2])], [tensor("y", [2])], [init("a", np.ones(2, np.float32)), init("b", np.ones(2, np.float64))]
    )
    out, result = run_pass("dedup-initializers", model)
    assert not result.changed and len(out.graph.initializer) == 2


def test_shape_inference_annotates_intermediate_tensors(conv_model):
    folded, _ = run_pass("constant-folding", conv_model)
    out, result = run_pass("shape-inference", folded)
    assert result.changed
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim] for vi in out.graph.value_info}
    assert shapes["a"] == ["N", 4, 8, 8]


def test_shape_inference_on_symbolic_reshape_uses_symbolic_engine():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", ["batch", "seq"])], [tensor("y", ["batch", "seq"])])
    out, _ = run_pass("shape-inference", model)
    info = {vi.name: vi for vi in out.graph.value_info}
    assert "r" in info and len(info["r"].type.tensor_type.shape.dim) == 2


def test_if_subgraph_survives_cleanup():
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
         helper.make_node("Mul", ["x", "c"], ["t_out"])],
        "then", [], [tensor("t_out", [3])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e_id"]), helper.make_node("Neg", ["e_id"], ["e_out"])],
        "else", [], [tensor("e_out", [3])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    model = make_model(nodes, [tensor("x", [3])], [tensor("y", [3])], [init("zero", np.array(0.0, np.float32))])
    for name in ("constant-folding", "remove-identity", "dead-code-elimination", "dedup-initializers", "shape-inference"):
        out, _ = run_pass(name, model)
        for seed in range(4):  # random signs take both branches
            assert_same_outputs(model, out, seed=seed)
        model = out
    assert "If" in ops(model)
