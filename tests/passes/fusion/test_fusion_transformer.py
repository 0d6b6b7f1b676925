"""LayerNorm, GELU, SkipLayerNorm and HardSwish fusions, with the opset raised when needed."""

import math

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.passes.fusion.fusion_helpers import (
    domains,
    floats,
    fuse,
    fused,
    init,
    make_model,
    node,
    ops,
    tensor,
    untouched,
)

HIDDEN = 8


def layernorm_nodes(x, y, prefix="ln", axes=(-1,), square="Pow"):
    p = prefix
    sq = node("Pow", [f"{p}_d", "two"], [f"{p}_p"]) if square == "Pow" else node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_p"])
    return [
        node("ReduceMean", [x], [f"{p}_m"], axes=list(axes)),
        node("Sub", [x, f"{p}_m"], [f"{p}_d"]),
        sq,
        node("ReduceMean", [f"{p}_p"], [f"{p}_v"], axes=list(axes)),
        node("Add", [f"{p}_v", "eps"], [f"{p}_ve"]),
        node("Sqrt", [f"{p}_ve"], [f"{p}_s"]),
        node("Div", [f"{p}_d", f"{p}_s"], [f"{p}_n"]),
        node("Mul", [f"{p}_n", f"{p}_gamma"], [f"{p}_g"]),
        node("Add", [f"{p}_g", f"{p}_beta"], [y]),
    ]


def ln_inits(prefix="ln", shape=(HIDDEN,)):
    return [init("two", np.float32(2.0)), init("eps", np.float32(1e-5)), init(f"{prefix}_gamma", floats(shape, 1)), init(f"{prefix}_beta", floats(shape, 2))]


def layernorm_model(opset=14, square="Pow", axes=(-1,), gamma_shape=(HIDDEN,), x_shape=("B", "S", HIDDEN)):
    return make_model(layernorm_nodes("x", "y", axes=axes, square=square), [tensor("x", list(x_shape))], [tensor("y", list(x_shape))],
                      ln_inits(shape=gamma_shape), opset=opset)


@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_decomposed_layernorm_becomes_layernormalization_at_opset_17(square):
    out, _ = fused(layernorm_model(square=square), ["LayerNormalization"], shapes={"x": (2, 5, HIDDEN)})
    assert domains(out)[""] == 17


def test_layernorm_over_two_trailing_axes():
    model = layernorm_model(axes=(1, 2), gamma_shape=(3, HIDDEN), x_shape=("B", 3, HIDDEN))
    out, _ = fused(model, ["LayerNormalization"], shapes={"x": (2, 3, HIDDEN)})
    assert helper.get_attribute_value(out.graph.node[0].attribute[0]) == -2


@pytest.mark.parametrize("case", ["not-a-suffix", "gamma-over-batch", "intermediate-output", "no-opset-raise"])
def test_layernorm_that_must_not_fuse(case):
    options = {}
    if case == "not-a-suffix":
        model = layernorm_model(axes=(1,), gamma_shape=(HIDDEN,), x_shape=(2, 3, HIDDEN))
    elif case == "gamma-over-batch":
        model = layernorm_model(gamma_shape=(2, 1, HIDDEN), x_shape=(2, 3, HIDDEN))
    elif case == "intermediate-output":
        model = layernorm_model()
        model.graph.output.append(tensor("ln_d", ["B", "S", HIDDEN]))
    else:
        model, options = layernorm_model(), {"raise_opset": False}
    out, result = fuse(model, **options)
    assert "LayerNormalization" not in ops(out) and "ReduceMean" in ops(out)
    assert domains(out)[""] == 14


def gelu_model(form="erf", opset=14, grouping="x-then-half", c=None):
    x = "x"
    if form == "erf":
        head = [node("Div", [x, "c"], ["a"]), node("Erf", ["a"], ["e"])]
        inits = [init("c", np.float32(c or math.sqrt(2.0)))]
    else:
        head = [node("Pow", [x, "three"], ["cube"]), node("Mul", ["k", "cube"], ["kc"]), node("Add", [x, "kc"], ["inner"]),
                node("Mul", ["inner", "c"], ["a"]), node("Tanh", ["a"], ["e"])]
        inits = [init("three", np.float32(3.0)), init("k", np.float32(0.044715)), init("c", np.float32(c or math.sqrt(2 / math.pi)))]
    tail = [node("Add", ["e", "one"], ["e1"])]
    if grouping == "x-then-half":
        tail += [node("Mul", [x, "e1"], ["m"]), node("Mul", ["m", "half"], ["y"])]
    else:
        tail += [node("Mul", [x, "half"], ["h"]), node("Mul", ["h", "e1"], ["y"])]
    inits += [init("one", np.float32(1.0)), init("half", np.float32(0.5))]
    return make_model(head + tail, [tensor("x", ["B", 16])], [tensor("y", ["B", 16])], inits, opset=opset)


@pytest.mark.parametrize("grouping", ["x-then-half", "half-then-x"])
def test_erf_gelu_becomes_contrib_gelu_for_ort(grouping):
    out, _ = fused(gelu_model(grouping=grouping), ["Gelu"], shapes={"x": (3, 16)})
    assert out.graph.node[0].domain == "com.microsoft" and domains(out)[""] == 14


def test_tanh_gelu_becomes_fast_gelu_for_ort():
    out, _ = fused(gelu_model(form="tanh"), ["FastGelu"], shapes={"x": (3, 16)})
    assert out.graph.node[0].domain == "com.microsoft"


@pytest.mark.parametrize("form,approximate", [("erf", "none"), ("tanh", "tanh")])
def test_gelu_is_the_standard_op_at_opset_20(form, approximate):
    out, _ = fused(gelu_model(form=form, opset=20), ["Gelu"], shapes={"x": (3, 16)})
    attrs = {a.name: helper.get_attribute_value(a) for a in out.graph.node[0].attribute}
    assert out.graph.node[0].domain == "" and attrs["approximate"].decode() == approximate


def test_gelu_for_a_non_ort_target_raises_the_opset_to_20():
    out, _ = fused(gelu_model(), ["Gelu"], target="trt-fp32", shapes={"x": (3, 16)})
    assert out.graph.node[0].domain == "" and domains(out)[""] == 20


def test_gelu_with_the_wrong_constant_stays():
    untouched(gelu_model(c=1.5), pass_name="fuse-gelu")


def test_gelu_for_non_ort_target_without_opset_raise_stays():
    out, result = fuse(gelu_model(), target="trt-fp32", raise_opset=False)
    assert "Gelu" not in ops(out) and "Erf" in ops(out)


def skip_model(extra_reader=False, b_shape=("B", "S", HIDDEN), opset=17):
    nodes = [node("Add", ["a", "b"], ["s"]), node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    outputs = [tensor("y", ["B", "S", HIDDEN])]
    if extra_reader:
        nodes.append(node("Relu", ["s"], ["z"]))
        outputs.append(tensor("z", ["B", "S", HIDDEN]))
    return make_model(nodes, [tensor("a", ["B", "S", HIDDEN]), tensor("b", list(b_shape))], outputs,
                      [init("gamma", floats(HIDDEN, 1)), init("beta", floats(HIDDEN, 2))], opset=opset)


def test_add_layernorm_becomes_skip_layernorm_for_ort(skip_layernorm_faster):
    out, _ = fused(skip_model(), ["SkipLayerNormalization"], shapes={"a": (2, 3, HIDDEN), "b": (2, 3, HIDDEN)})
    assert out.graph.node[0].domain == "com.microsoft"


def test_skip_layernorm_keeps_the_sum_for_other_readers(skip_layernorm_faster):
    out, _ = fused(skip_model(extra_reader=True), ["SkipLayerNormalization", "Relu"], shapes={"a": (2, 3, HIDDEN), "b": (2, 3, HIDDEN)})
    assert out.graph.node[0].output[3] == "s"


def test_where_skip_layernorm_measures_slower_the_residual_add_becomes_a_sum_ort_does_not_refuse(skip_layernorm_slower, tmp_path):
    import collections

    import onnxruntime as ort

    out, _ = fused(skip_model(extra_reader=True), ["Sum", "LayerNormalization", "Relu"], shapes={"a": (2, 3, HIDDEN), "b": (2, 3, HIDDEN)})
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(out.SerializeToString(), so, providers=["CPUExecutionProvider"])
    loaded = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node)
    assert loaded["SkipLayerNormalization"] == 0 and loaded["LayerNormalization"] == 1


def test_the_measurement_compares_the_two_forms_on_this_machine():
    from onnxopt.passes.fusion.residual_norm import skip_layernorm_is_faster

    assert isinstance(skip_layernorm_is_faster(HIDDEN), bool)
    assert skip_layernorm_is_faster.cache_info().currsize >= 1  # measured once per hidden size


def test_skip_layernorm_not_for_other_targets_nor_broadcasting_adds():
    out, result = fuse(skip_model(), target="trt-fp32")
    assert ops(out) == ["Add", "LayerNormalization"]
    untouched(skip_model(b_shape=(1, 1, HIDDEN)))


def hardswish_model(div_first=False, high=6.0, opset=12):
    nodes = [node("Relu", ["x"], ["r"]), node("Add", ["x", "three"], ["a"]), node("Clip", ["a", "zero", "six"], ["c"])]
    if div_first:
        nodes += [node("Div", ["c", "sixd"], ["q"]), node("Mul", ["x", "q"], ["m"])]
    else:
        nodes += [node("Mul", ["x", "c"], ["q"]), node("Div", ["q", "sixd"], ["m"])]
    nodes += [node("Add", ["m", "r"], ["y"])]
    inits = [init("three", np.float32(3)), init("zero", np.float32(0)), init("six", np.float32(high)), init("sixd", np.float32(6))]
    return make_model(nodes, [tensor("x", [2, 4, 3, 3])], [tensor("y", [2, 4, 3, 3])], inits, opset=opset)


@pytest.mark.parametrize("div_first", [False, True])
def test_decomposed_hardswish_becomes_hardswish(div_first):
    out, _ = fused(hardswish_model(div_first), ["Relu", "HardSwish", "Add"], seeds=(0, 1, 2))
    assert domains(out)[""] >= 14


def test_hardsigmoid_times_x_becomes_hardswish():
    nodes = [node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5), node("Mul", ["x", "h"], ["y"])]
    fused(make_model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 8])], opset=14), ["HardSwish"])


def test_clip_to_other_bounds_or_paddle_hardsigmoid_stays():
    out, _ = fuse(hardswish_model(high=5.0))
    assert "HardSwish" not in ops(out)
    nodes = [node("HardSigmoid", ["x"], ["h"], alpha=0.2, beta=0.5), node("Mul", ["x", "h"], ["y"])]
    untouched(make_model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 8])], opset=14))
