"""BatchNormalization folding: Conv, ConvTranspose, Gemm, MatMul; and the BNs that must stay."""

from tests.passes.fusion.fusion_helpers import floats, fuse, fused, init, make_model, node, ops, tensor, untouched


def bn_inits(prefix, channels, seed=1):
    return [
        init(f"{prefix}_gamma", floats(channels, seed)),
        init(f"{prefix}_beta", floats(channels, seed + 1)),
        init(f"{prefix}_mean", floats(channels, seed + 2)),
        init(f"{prefix}_var", floats(channels, seed + 3, low=0.5)),
    ]


def bn(inp, out, prefix="bn", **attrs):
    return node("BatchNormalization", [inp, f"{prefix}_gamma", f"{prefix}_beta", f"{prefix}_mean", f"{prefix}_var"], [out], epsilon=1e-3, **attrs)


def conv_bn_model(with_bias=True):
    inputs = ["x", "w", "b"] if with_bias else ["x", "w"]
    inits = [init("w", floats((4, 3, 3, 3)))] + ([init("b", floats(4, 9))] if with_bias else []) + bn_inits("bn", 4)
    nodes = [node("Conv", inputs, ["c"], pads=[1, 1, 1, 1]), bn("c", "y")]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4, 8, 8])], inits)


def test_conv_bn_folds_into_conv():
    out, result = fused(conv_bn_model(), ["Conv"], pass_name="fold-batchnorm")
    assert result.stats["FoldConvBatchNorm"] == 1
    assert out.graph.node[0].output[0] == "y"


def test_conv_without_bias_gets_one():
    out, _ = fused(conv_bn_model(with_bias=False), ["Conv"], pass_name="fold-batchnorm")
    assert len(out.graph.node[0].input) == 3


def test_grouped_conv_transpose_bn_folds():
    inits = [init("w", floats((4, 3, 2, 2)))] + bn_inits("bn", 6)  # C_in 4, group 2 -> C_out 2*3
    nodes = [node("ConvTranspose", ["x", "w"], ["c"], group=2, strides=[2, 2]), bn("c", "y")]
    model = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 6, 10, 10])], inits)
    fused(model, ["ConvTranspose"], pass_name="fold-batchnorm")


def test_gemm_bn_folds_into_weights_and_bias():
    inits = [init("w", floats((5, 4))), init("c", floats(5, 3))] + bn_inits("bn", 5)
    nodes = [node("Gemm", ["x", "w", "c"], ["g"], transB=1, beta=0.5), bn("g", "y")]
    model = make_model(nodes, [tensor("x", [3, 4])], [tensor("y", [3, 5])], inits)
    fused(model, ["Gemm"], pass_name="fold-batchnorm")


def test_matmul_2d_bn_becomes_gemm():
    inits = [init("w", floats((4, 5)))] + bn_inits("bn", 5)
    model = make_model([node("MatMul", ["x", "w"], ["m"]), bn("m", "y")], [tensor("x", [3, 4])], [tensor("y", [3, 5])], inits)
    fused(model, ["Gemm"], pass_name="fold-batchnorm")


def test_bn_stays_when_conv_weight_is_shared():
    inits = [init("w", floats((4, 4, 3, 3)))] + bn_inits("bn", 4)
    nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn("c", "b1"), node("Conv", ["b1", "w"], ["y"], pads=[1, 1, 1, 1])]
    untouched(make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits), pass_name="fold-batchnorm")


def test_bn_stays_with_non_constant_statistics():
    inits = [init("w", floats((4, 3, 3, 3)))] + bn_inits("bn", 4)[:3]
    nodes = [node("Conv", ["x", "w"], ["c"]), bn("c", "y")]
    model = make_model(nodes, [tensor("x", [1, 3, 6, 6]), tensor("bn_var", [4])], [tensor("y", [1, 4, 4, 4])], inits)
    untouched(model, pass_name="fold-batchnorm")


def test_bn_stays_when_conv_output_is_a_graph_output():
    model = conv_bn_model()
    model.graph.output.append(tensor("c", ["N", 4, 8, 8]))
    untouched(model, pass_name="fold-batchnorm")


def test_bn_after_3d_matmul_stays():
    inits = [init("w", floats((4, 5)))] + bn_inits("bn", 3)
    model = make_model([node("MatMul", ["x", "w"], ["m"]), bn("m", "y")], [tensor("x", [2, 3, 4])], [tensor("y", [2, 3, 5])], inits)
    untouched(model, pass_name="fold-batchnorm")


def test_bn_in_training_mode_stays():
    inits = [init("w", floats((4, 3, 3, 3)))] + bn_inits("bn", 4)
    nodes = [node("Conv", ["x", "w"], ["c"]), node("BatchNormalization", ["c", "bn_gamma", "bn_beta", "bn_mean", "bn_var"], ["y", "rm", "rv"], training_mode=1)]
    model = make_model(nodes, [tensor("x", [2, 3, 6, 6])], [tensor("y", [2, 4, 4, 4]), tensor("rm", [4]), tensor("rv", [4])], inits)
    out, result = fuse(model, "fold-batchnorm")
    assert ops(out) == ["Conv", "BatchNormalization"] and not result.changed
