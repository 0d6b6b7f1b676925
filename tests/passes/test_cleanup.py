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


# --- regressions from ONNX's node-test suite (tests/robustness/node_suite.py) ---------------------


import pytest  # noqa: E402


@pytest.mark.parametrize(
    "start,end,expected",
    [(1, None, [3, 4, 5]), (None, -1, [2, 3, 4]), (-2, None, [4, 5]), (-10, 10, [2, 3, 4, 5]), (10, None, []), (1, -1, [3, 4]), (3, 1, [])],
)
def test_constant_folding_honours_shape_start_and_end(start, end, expected):
    """gs's shape folding returned the whole shape whatever Shape's start/end (opset 15) said."""
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    model = make_model([helper.make_node("Shape", ["x"], ["y"], **attrs)], [tensor("x", [2, 3, 4, 5])], [tensor("y", ["k"], TensorProto.INT64)], opset=15)
    graph = import_graph(model)
    get_pass("shape-inference")().run(graph, PassContext())
    get_pass("constant-folding")().run(graph, PassContext())
    out = export_model(graph, model)
    assert "Shape" not in ops(out)
    assert_same_outputs(model, out)
    folded = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert folded["y"].tolist() == expected


def test_constant_folding_reads_gather_of_a_sliced_shape_at_the_sliced_position():
    """Shape(start=1) -> Gather(0) of an input [N, 3, 4] is 3, not the input's dim 0."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0)]
    model = make_model(nodes, [tensor("x", ["N", 3, 4])], [tensor("n", [], TensorProto.INT64)], [init("zero", np.array(0, np.int64))], opset=15)
    graph = import_graph(model)
    get_pass("shape-inference")().run(graph, PassContext())
    get_pass("constant-folding")().run(graph, PassContext())
    out = export_model(graph, model)
    assert ops(out) == []
    assert numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == "n")).tolist() == 3
    assert_same_outputs(model, out, shapes={"x": (2, 3, 4)})


def _if_model(then_nodes, else_nodes, then_out, else_out, out_type, extra_inputs=()):
    then_graph = helper.make_graph(then_nodes, "then", [], [then_out])
    else_graph = helper.make_graph(else_nodes, "else", [], [else_out])
    node = helper.make_node("If", ["cond"], ["res"], then_branch=then_graph, else_branch=else_graph)
    res = helper.make_value_info("res", out_type)
    graph = helper.make_graph([node], "if", [tensor("cond", [], TensorProto.BOOL), *extra_inputs], [res])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _run_sequence_model(model, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_constant_folding_leaves_sequences_in_if_branches_alone():
    """test_if_seq: gs folded SequenceConstruct of constants inside a branch (a list, RecursionError
    or AttributeError 'list'); sequences are left as they are and the model still runs."""
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))
    then_nodes = [helper.make_node("Constant", [], ["a"], value=init("va", np.ones(2, np.float32))), helper.make_node("SequenceConstruct", ["a"], ["t"])]
    else_nodes = [helper.make_node("Constant", [], ["b"], value=init("vb", np.zeros(2, np.float32))), helper.make_node("SequenceConstruct", ["b"], ["e"])]
    model = _if_model(then_nodes, else_nodes, helper.make_value_info("t", seq_type), helper.make_value_info("e", seq_type), seq_type)
    for name in ("shape-inference", "constant-folding", "remove-identity", "dead-code-elimination", "dedup-initializers"):
        out, _ = run_pass(name, model)
        assert "SequenceConstruct" in {n.op_type for node in out.graph.node for a in node.attribute if a.HasField("g") for n in a.g.node}
        for cond in (True, False):
            feeds = {"cond": np.array(cond)}
            expected, actual = _run_sequence_model(model, feeds), _run_sequence_model(out, feeds)
            np.testing.assert_array_equal(actual[0][0], expected[0][0])


def test_optional_types_and_type_attributes_survive_import_and_export():
    """test_if_opt: gs dropped Optional's `type` attribute and crashed exporting optional values."""
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [5]))
    opt_type = helper.make_optional_type_proto(seq_type)
    then_nodes = [
        helper.make_node("Constant", [], ["x"], value=init("vx", np.arange(5, dtype=np.float32))),
        helper.make_node("SequenceConstruct", ["x"], ["seq"]),
        helper.make_node("Optional", ["seq"], ["t"]),
    ]
    else_nodes = [helper.make_node("Optional", [], ["e"], type=seq_type)]
    model = _if_model(then_nodes, else_nodes, helper.make_value_info("t", opt_type), helper.make_value_info("e", opt_type), opt_type)
    for name in ("shape-inference", "constant-folding", "cse", "fusion"):
        out, _ = run_pass(name, model)
        assert out.graph.output[0].type == opt_type
        for cond in (True, False):
            expected, actual = _run_sequence_model(model, {"cond": np.array(cond)}), _run_sequence_model(out, {"cond": np.array(cond)})
            assert (actual[0] is None) == (expected[0] is None)
