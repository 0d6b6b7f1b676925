"""Zero Pad merged into Conv and pooling; MatMul + bias Add into Gemm; and the cases that must stay."""

import numpy as np
import pytest
from onnx import helper

from tests.conftest import assert_same_outputs
from tests.passes.fusion.fusion_helpers import floats, fuse, fused, init, make_model, node, tensor, untouched


def pad_then(op, amounts, value=None, mode="constant", **attrs):
    pad_inputs = ["x", "pads"] + (["value"] if value is not None else [])
    inits = [init("pads", np.asarray(amounts, np.int64))] + ([init("value", np.float32(value))] if value is not None else [])
    nodes = [node("Pad", pad_inputs, ["p"], mode=mode)]
    if op == "Conv":
        nodes.append(node("Conv", ["p", "w"], ["y"], **attrs))
        inits.append(init("w", floats((2, 3, 3, 3))))
    else:
        nodes.append(node(op, ["p"], ["y"], kernel_shape=[3, 3], **attrs))
    model = make_model(nodes, [tensor("x", [1, 3, 7, 7])], [tensor("y", ["n", "c", "h", "w"])], inits)
    return model


def test_zero_pad_merges_into_conv_pads():
    out, _ = fused(pad_then("Conv", [0, 0, 1, 2, 0, 0, 2, 1], pads=[1, 0, 0, 1]), ["Conv"], pass_name="merge-pad")
    attrs = {a.name: helper.get_attribute_value(a) for a in out.graph.node[0].attribute}
    assert list(attrs["pads"]) == [2, 2, 2, 2]


def test_zero_pad_merges_into_average_pool_counting_pads():
    out, _ = fused(pad_then("AveragePool", [0, 0, 1, 1, 0, 0, 1, 1]), ["AveragePool"], pass_name="merge-pad")
    attrs = {a.name: helper.get_attribute_value(a) for a in out.graph.node[0].attribute}
    assert attrs["count_include_pad"] == 1 and list(attrs["pads"]) == [1, 1, 1, 1]


def test_minus_inf_pad_merges_into_max_pool():
    fused(pad_then("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1], value=-np.inf), ["MaxPool"], pass_name="merge-pad")


@pytest.mark.parametrize("case", ["nonzero-value", "channel-pad", "reflect", "zero-into-maxpool", "avgpool-own-pads-uncounted", "ceil-mode"])
def test_pads_that_would_change_the_result_stay(case):
    model = {
        "nonzero-value": lambda: pad_then("Conv", [0, 0, 1, 1, 0, 0, 1, 1], value=1.0),
        "channel-pad": lambda: pad_then("AveragePool", [0, 1, 1, 1, 0, 0, 1, 1]),
        "reflect": lambda: pad_then("Conv", [0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"),
        "zero-into-maxpool": lambda: pad_then("MaxPool", [0, 0, 1, 1, 0, 0, 1, 1]),
        "avgpool-own-pads-uncounted": lambda: pad_then("AveragePool", [0, 0, 1, 1, 0, 0, 1, 1], pads=[1, 1, 1, 1]),
        "ceil-mode": lambda: pad_then("AveragePool", [0, 0, 1, 1, 0, 0, 1, 1], ceil_mode=1, strides=[2, 2]),
    }[case]()
    untouched(model, pass_name="merge-pad")


def test_pad_that_is_a_graph_output_stays():
    model = pad_then("Conv", [0, 0, 1, 1, 0, 0, 1, 1])
    model.graph.output.append(tensor("p", [1, 3, 9, 9]))
    untouched(model, pass_name="merge-pad")


def matmul_add(x_shape, bias, bias_first=False, out_shape=("r", "k")):
    add = node("Add", ["b", "m"] if bias_first else ["m", "b"], ["y"])
    return make_model([node("MatMul", ["x", "w"], ["m"]), add], [tensor("x", x_shape)], [tensor("y", list(out_shape))],
                      [init("w", floats((4, 5))), init("b", bias)])


@pytest.mark.parametrize("bias_shape", [(5,), (1, 5), ()])
def test_matmul_bias_add_becomes_gemm(bias_shape):
    fused(matmul_add(["N", 4], floats(bias_shape, 2), bias_first=bias_shape == (5,)), ["Gemm"], pass_name="matmul-add-to-gemm")


def test_matmul_add_on_3d_input_stays():
    untouched(matmul_add([2, 3, 4], floats(5, 2), out_shape=(2, 3, 5)), pass_name="matmul-add-to-gemm")


def test_bias_that_broadcasts_the_batch_or_grows_the_result_stays():
    untouched(matmul_add(["N", 4], floats((3, 5), 2)), pass_name="matmul-add-to-gemm")
    untouched(matmul_add([3, 4], floats((2, 3, 5), 2), out_shape=(2, 3, 5)), pass_name="matmul-add-to-gemm")


def test_non_constant_bias_stays():
    nodes = [node("MatMul", ["x", "w"], ["m"]), node("Add", ["m", "b"], ["y"])]
    model = make_model(nodes, [tensor("x", [3, 4]), tensor("b", [5])], [tensor("y", [3, 5])], [init("w", floats((4, 5)))])
    untouched(model, pass_name="matmul-add-to-gemm")


def test_matmul_output_also_a_graph_output_stays():
    model = matmul_add([3, 4], floats(5, 2))
    model.graph.output.append(tensor("m", [3, 5]))
    out, result = fuse(model, "matmul-add-to-gemm")
    assert not result.changed
    assert_same_outputs(model, out)
