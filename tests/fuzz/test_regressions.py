"""Shrunk failing cases from the fuzzers and the op table, kept as plain tests.

Each was a crash with a non-onnxopt exception, a valid model refused, or a memory blow-up; the
docstring says which and what fixed it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxopt
from onnxopt.errors import ModelInvalidError
from onnxopt.graphs import export_model, import_graph
from onnxopt.ir import load_model
from onnxopt.pipeline import PassContext, get_pass
from tests.conftest import assert_same_outputs, init, make_model, tensor


def relu_model():
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x", ["batchdim", 3])], [tensor("y", ["batchdim", 3])])


def corrupted(needle: bytes) -> onnx.ModelProto:
    data = bytearray(relu_model().SerializeToString())
    data[data.find(needle)] = 0xE5  # not a valid UTF-8 start byte
    model = onnx.ModelProto()
    model.ParseFromString(bytes(data))
    return model


@pytest.mark.parametrize("needle", [b"relu", b"batchdim"])
def test_invalid_utf8_name_or_dim_is_model_invalid(needle):
    """A flipped byte in a node name (UnicodeDecodeError in gs export) or a dim_param (ValueError in
    make_tensor_value_info): protobuf hands back bytes for such strings. Fixed by a UTF-8 check at load."""
    with pytest.raises(ModelInvalidError, match="not valid UTF-8"):
        onnxopt.compile(corrupted(needle), profile=False)


def test_initializer_with_data_type_zero_is_model_invalid():
    """onnx's strict shape inference raised a bare ValueError ("Invalid tensor data type 0") before
    the checker ran. Fixed by running our structure checks, then onnx.checker, then inference."""
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [tensor("x", [2])], [tensor("y", [2])], [init("w", np.ones(2, np.float32))])
    model.graph.initializer[0].data_type = 0
    with pytest.raises(ModelInvalidError):
        load_model(model)


def test_input_with_element_type_zero_is_model_invalid():
    """input_specs raised KeyError: 0 from onnx's dtype table."""
    model = relu_model()
    model.graph.input[0].type.tensor_type.elem_type = 0
    with pytest.raises(ModelInvalidError):
        onnxopt.compile(model, profile=False)


def test_mean_variance_normalization_is_not_refused():
    """onnx's strict shape inference fails on MeanVarianceNormalization (it cannot infer the op's
    function body), so the strict check refused a valid model. onnxruntime loading the model now
    breaks the tie."""
    model = make_model([helper.make_node("MeanVarianceNormalization", ["x"], ["y"])], [tensor("x", [2, 3, 4, 4])], [tensor("y", [2, 3, 4, 4])])
    result = onnxopt.compile(model, profile=False)
    assert [n.op_type for n in result.model.graph.node] == ["MeanVarianceNormalization"]
    assert_same_outputs(model, result.model)


def test_string_input_model_compiles_without_verification():
    """A valid model with a string input failed: random_feeds raised ConfigError inside the verifier."""
    model = make_model(
        [helper.make_node("StringNormalizer", ["s"], ["y"], case_change_action="LOWER")],
        [tensor("s", [3], TensorProto.STRING)],
        [tensor("y", [3], TensorProto.STRING)],
    )
    result = onnxopt.compile(model)
    assert result.report.verification.get("skipped")
    assert any("profiling skipped" in w for w in result.report.warnings)


def test_shape_inference_pass_does_not_load_weights():
    """ShapeInference read `.values` to size each constant, loading every lazily imported weight."""
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [1, 512])], [tensor("y", [1, 512])], [init("w", np.ones((512, 512), np.float32))])
    graph = import_graph(model)
    get_pass("shape-inference")().run(graph, PassContext())
    weight = graph.tensors()["w"]
    assert type(weight._values).__name__ == "LazyValues"


def test_dedup_reads_only_constants_that_share_dtype_and_shape():
    """Dedup hashed (and kept in memory) every weight; now only same-shape candidates are read, once."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Add", ["a", "b1"], ["c"]), helper.make_node("Add", ["c", "b2"], ["y"])]
    model = make_model(
        nodes,
        [tensor("x", [1, 64])],
        [tensor("y", [1, 64])],
        [init("w1", np.ones((64, 64), np.float32)), init("b1", np.full(64, 0.5, np.float32)), init("b2", np.full(64, 0.5, np.float32))],
    )
    graph = import_graph(model)
    result = get_pass("dedup-initializers")().run(graph, PassContext())
    assert result.stats["merged"] == 1
    assert type(graph.tensors()["w1"]._values).__name__ == "LazyValues"


def test_cycle_through_if_branch_is_reported_as_cycle():
    """A cycle closed through an If branch's outer-scope read, found while writing check_structure."""
    branch = helper.make_graph([helper.make_node("Relu", ["b"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("If", ["cond"], ["a"], then_branch=branch, else_branch=branch, name="if"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "g", [tensor("cond", [], TensorProto.BOOL)], [tensor("b", None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelInvalidError, match="has a cycle"):
        load_model(model)


@pytest.mark.parametrize("dtype", [TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.INT4, TensorProto.FLOAT16])
def test_weights_of_types_numpy_lacks_survive(dtype):
    """Sizing constants by np.dtype(tensor.dtype) crashed on bfloat16/float8 (gs reports them as onnx
    type numbers). Two identical copies also exercise dedup."""
    weights = [helper.make_tensor(name, dtype, [4, 600], np.ones(2400).tolist()) for name in ("w", "w_copy")]
    nodes = [
        helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w_copy"], ["wf2"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "wf"], ["s"]),
        helper.make_node("Add", ["s", "wf2"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [4, 600])], [tensor("y", [4, 600])], weights, opset=21)
    result = onnxopt.compile(model, profile=False)  # folds the Casts, then merges the two folded copies
    assert result.report.verification["ok"] is True and len(result.model.graph.initializer) == 1
    assert_same_outputs(model, result.model)
    graph = import_graph(model)
    assert get_pass("dedup-initializers")().run(graph, PassContext()).stats["merged"] == 1
    deduped = export_model(graph, model)
    assert [(i.name, i.data_type) for i in deduped.graph.initializer] == [("w", dtype)]
    assert_same_outputs(model, deduped)


def test_onnxruntime_cast_chain_into_if_branch_skips_verification():
    """Found by the fuzzer: onnxruntime 1.32 cannot run Cast->Cast (same type) whose output only an
    If branch reads ("Missing Input"), an upstream bug. onnxopt must still compile such a valid
    model, with verification skipped and said so, and leave the graph's meaning alone."""
    branch = lambda name: helper.make_graph(  # noqa: E731
        [helper.make_node("Relu", ["c2"], [name])], name, [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)]
    )
    nodes = [
        helper.make_node("Cast", ["x"], ["c1"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["c1"], ["c2"], to=TensorProto.FLOAT),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("t"), else_branch=branch("e")),
    ]
    model = make_model(nodes, [tensor("x", ["N", 1]), tensor("cond", [], TensorProto.BOOL)], [tensor("y", ["N", 1])])
    result = onnxopt.compile(model, profile=False)
    assert "Missing Input" in result.report.verification["skipped"]
    assert [n.op_type for n in result.model.graph.node][-1] == "If"


def test_incomplete_symbolic_inference_leaves_no_file_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's SymbolicShapeInference.infer_shapes() saves sym_shape_infer_temp.onnx into the
    current directory when it cannot finish (here: a custom op after a dynamic dim); the user's
    folder filled with it on every such compile."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Swish", ["r"], ["s"], domain="com.acme"),  # no shape: symbolic inference runs
            helper.make_node("Relu", ["s"], ["y"]),
        ],
        "g",
        [tensor("x", ["N", 3])],
        [tensor("y", ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])
    monkeypatch.chdir(tmp_path)
    result = onnxopt.compile(model, profile=False)
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Swish", "Relu"]
    assert list(tmp_path.iterdir()) == []
