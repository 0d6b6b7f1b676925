"""depthwise-separable: exact decompositions, per-layer choice, budgets, refusals, reconstruction."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.errors import ConfigError
from onnxopt.graphs import FreshNames, export_model, import_graph
from onnxopt.passes.depthwise import DepthwiseSeparable, Form, depthwise_factors, spatial_factors, substitute
from onnxopt.pipeline import PassContext
from onnxopt.runtime import run_model
from tests.passes.prune import prune_graphs as nets


def low_rank_weight(cout, cin, k, rank, seed=0):
    """Weights whose every input channel's Cout x K^2 slice has the given rank."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((cin, cout, rank))
    v = rng.standard_normal((cin, rank, k * k))
    return np.einsum("cor,crk->cok", u, v).reshape(cin, cout, k, k).transpose(1, 0, 2, 3).astype(np.float32)


def conv_model(weight, attrs=None, in_hw=(12, 12), bias=True):
    cout, cin = weight.shape[:2]
    attrs = {"kernel_shape": list(weight.shape[2:]), **(attrs or {})}
    inputs = ["x", "w"] + (["b"] if bias else [])
    inits = [numpy_helper.from_array(weight, "w")]
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, cout).astype(np.float32), "b"))
    nodes = [helper.make_node("Conv", inputs, ["c"], name="conv", **attrs), helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, *in_hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_pass(model, calibration=None, **options):
    graph = import_graph(model)
    ctx = PassContext(teacher=model, calibration=onnxopt.calibration.open_calibration(calibration, model) if calibration else None)
    result = DepthwiseSeparable(**options).run(graph, ctx)
    return export_model(graph, model), result, ctx


def feeds(model, seed=0):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def conv_shapes(model):
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [(n.name, inits[n.input[1]], next((a.i for a in n.attribute if a.name == "group"), 1)) for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"strides": [2, 2], "pads": [0, 1, 2, 1], "dilations": [2, 1]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 1]},
    ],
)
def test_rank_one_slices_become_an_exact_depthwise_pointwise_pair(attrs):
    model = conv_model(low_rank_weight(16, 6, 3, rank=1), attrs)
    out, result, ctx = run_pass(model, max_error=1e-6)
    assert result.changed
    assert conv_shapes(out) == [("conv.dw", (6, 1, 3, 3), 6), ("conv.pw", (16, 6, 1, 1), 1)]
    layer = ctx.artifacts["report:depthwise-separable"]["layers"][0]
    assert layer["form"] == "depthwise" and layer["rank"] == 1 and layer["macs_after"] < layer["macs_before"]
    x = feeds(model)
    np.testing.assert_allclose(run_model(out, x)["y"], run_model(model, x)["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("split", [False, True])
def test_rank_m_is_exact_and_a_lower_rank_is_not(split):
    weight = low_rank_weight(32, 4, 3, rank=2, seed=1)
    model = conv_model(weight, {"strides": [2, 2], "pads": [1, 0, 1, 2]})
    x = feeds(model)
    reference = run_model(model, x)["y"]
    for m, exact in ((2, True), (1, False)):
        graph = import_graph(model)
        substitute(graph, graph.nodes[0], Form("depthwise", m, 0, 0, 0.0), FreshNames(graph), split_multiplier=split)
        graph.cleanup().toposort()
        out = export_model(graph)
        error = np.abs(run_model(out, x)["y"] - reference).max()
        assert (error < 1e-4) == exact, (m, error)
        if split and m == 2:  # two multiplier-1 depthwise convs, concatenated, then the pointwise conv
            assert [n.op_type for n in out.graph.node] == ["Conv", "Conv", "Concat", "Conv", "Relu"]
            assert [s[2] for s in conv_shapes(out)] == [4, 4, 1]
    dw, pw = depthwise_factors(weight, 2)
    assert dw.shape == (8, 1, 3, 3) and pw.shape == (32, 8, 1, 1)


def test_spatially_separable_form_is_exact_at_full_rank_of_the_unfolded_weight():
    rng = np.random.default_rng(2)
    cout, cin, k, rank = 8, 5, 3, 4
    a, b = rng.standard_normal((cin * k, rank)), rng.standard_normal((cout * k, rank))
    weight = (a @ b.T).reshape(cin, k, cout, k).transpose(2, 0, 1, 3).astype(np.float32)
    model = conv_model(weight, {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]})
    graph = import_graph(model)
    substitute(graph, graph.nodes[0], Form("spatial", rank, 0, 0, 0.0), FreshNames(graph))
    graph.cleanup().toposort()
    out = export_model(graph)
    assert [s[1] for s in conv_shapes(out)] == [(rank, cin, k, 1), (cout, rank, 1, k)]
    x = feeds(model)
    np.testing.assert_allclose(run_model(out, x)["y"], run_model(model, x)["y"], rtol=1e-4, atol=1e-4)
    vertical, horizontal = spatial_factors(weight, rank)
    assert vertical.shape == (rank, cin, k, 1) and horizontal.shape == (cout, rank, 1, k)


def test_spatial_form_is_chosen_where_it_wins():
    rng = np.random.default_rng(3)
    cout, cin, k = 32, 32, 3
    a, b = rng.standard_normal((cin * k, 2)), rng.standard_normal((cout * k, 2))
    weight = (a @ b.T).reshape(cin, k, cout, k).transpose(2, 0, 1, 3).astype(np.float32)  # rank 2 unfolded, full-rank slices
    out, _, ctx = run_pass(conv_model(weight, {"pads": [1, 1, 1, 1]}), max_error=1e-4, spatial=True)
    layer = ctx.artifacts["report:depthwise-separable"]["layers"][0]
    assert layer["form"] == "spatial" and layer["rank"] <= 4
    x = feeds(out)
    np.testing.assert_allclose(run_model(out, x)["y"], run_model(conv_model(weight, {"pads": [1, 1, 1, 1]}), x)["y"], rtol=1e-3, atol=1e-3)


def test_layers_where_flops_would_not_fall_are_left_alone():
    one_out = conv_model(np.random.default_rng(0).standard_normal((1, 8, 3, 3)).astype(np.float32))
    _, result, _ = run_pass(one_out, max_error=1.0)  # Cout = 1: m (1 + 1/9) > 1 for every m
    assert not result.changed
    pointwise = conv_model(np.random.default_rng(0).standard_normal((8, 8, 1, 1)).astype(np.float32))
    _, result, _ = run_pass(pointwise, max_error=1.0)
    assert not result.changed


def test_grouped_and_skipped_convs_are_not_substituted():
    model = nets.grouped_cnn()
    out, _, ctx = run_pass(model, max_error=1.0, skip=("a.*",))
    names = {layer["layer"] for layer in ctx.artifacts["report:depthwise-separable"]["layers"]}
    assert "g.conv" not in names and "a.conv" not in names
    assert ("g.conv", (32, 8, 3, 3), 4) in conv_shapes(out)


def test_flops_target_is_met_and_beats_half():
    model = nets.plain_cnn()
    out, result, ctx = run_pass(model, flops_target=0.5)
    report = ctx.artifacts["report:depthwise-separable"]
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    assert run_model(out, feeds(model))["y"].shape == (1, 5)


def test_reconstruction_lowers_the_error_on_calibration_data():
    model = nets.plain_cnn()
    calib = nets.samples(model, 12)
    plain, _, _ = run_pass(model, calib, flops_target=0.5, reconstruct=False)
    refit, _, ctx = run_pass(model, calib, flops_target=0.5)
    for layer in ctx.artifacts["report:depthwise-separable"]["layers"]:
        assert layer["error_refit"] < layer["error_measured_before_refit"]

    def error(candidate):
        ref = np.concatenate([run_model(model, f)["y"] for f in calib])
        out = np.concatenate([run_model(candidate, f)["y"] for f in calib])
        return np.linalg.norm(out - ref) / np.linalg.norm(ref)

    assert error(refit) < 0.8 * error(plain)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        run_pass(nets.plain_cnn(), flops_target=1.5)
    with pytest.raises(ConfigError, match="unknown option"):
        DepthwiseSeparable(rank=3)


def test_composes_with_pruning_in_one_recipe():
    model = nets.residual_cnn()
    calib = nets.samples(model, 8)
    passes = [{"name": "depthwise-separable", "flops_target": 0.6}, {"name": "channel-prune", "ratio": 0.5, "min_channels": 4, "round_to": 4}]
    result = onnxopt.compile(model, calibration=calib, extra_passes=passes, save=False, profile=False)
    arts = result.report.artifacts
    assert arts["depthwise-separable"]["substituted"] >= 1 and arts["channel-prune"]["groups_pruned"] >= 1
    assert arts["channel-prune"]["macs_after"] < arts["depthwise-separable"]["macs_after"] < arts["depthwise-separable"]["macs_before"]
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Conv") > 5
    out = run_model(result.model, calib[0])["y"]
    assert out.shape == (1, 5) and np.isfinite(out).all()
