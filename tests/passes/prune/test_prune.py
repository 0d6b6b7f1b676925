"""channel-prune: group discovery, blocking, physical removal, budget and reconstruction."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.errors import CalibrationError, ConfigError
from onnxopt.graphs import export_model, import_graph
from onnxopt.passes.prune import ChannelPrune, analyse
from onnxopt.passes.reconstruct import capture
from onnxopt.pipeline import PassContext, get_pass
from onnxopt.runtime import run_model
from tests.passes.prune import prune_graphs as nets


def groups_of(model):
    graph = import_graph(model)
    get_pass("shape-inference")().run(graph, PassContext())
    return graph, analyse(graph)


def group_with(analysis, producer):
    return next(g for g in analysis.groups if any(p.name == producer for p in g.producers))


def prune(model, calibration=None, **options):
    graph = import_graph(model)
    ctx = PassContext(teacher=model, calibration=onnxopt.calibration.open_calibration(calibration, model) if calibration else None)
    result = ChannelPrune(**options).run(graph, ctx)
    return export_model(graph, model), result, ctx


def weight_shapes(model):
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


# -- group discovery -----------------------------------------------------------------------------


def test_residual_add_puts_both_summands_and_their_bn_in_one_group():
    _, analysis = groups_of(nets.residual_cnn())
    group = group_with(analysis, "stem.conv")
    assert {p.name for p in group.producers} == {"stem.conv", "r2.conv"}
    assert {c.name for c in group.consumers} == {"r1.conv", "tail.conv"}
    assert group.n_classes == 16 and group.prunable
    bn_params = [d for d in group.dims if d.node is not None and d.node.op == "BatchNormalization"]
    assert len(bn_params) == 8  # scale, bias, mean, var of stem.bn and r2.bn
    for dim in group.dims:  # channel i of every summand is the same class
        assert np.array_equal(group.classes[dim.key], group.classes[group.dims[0].key]) or dim.length != 16


def test_concat_and_split_shift_channel_indices():
    _, analysis = groups_of(nets.concat_cnn())
    cat = group_with(analysis, "left.conv")
    assert {p.name for p in cat.producers} == {"left.conv", "right.conv"}
    assert cat.n_classes == 32
    left, right, joined = cat.classes["left.relu.out"], cat.classes["right.relu.out"], cat.classes["cat.out"]
    assert np.array_equal(joined[:16], left) and np.array_equal(joined[16:], right)
    # after the split, the first 16 channels feed conv p, the last 8 are added to p's output
    split = group_with(analysis, "after.conv")
    assert {p.name for p in split.producers} == {"after.conv", "p"}
    assert split.n_classes == 24 and split.prunable
    assert np.array_equal(split.classes["split.out1"], split.classes["p.out"])


def test_depthwise_conv_ties_its_input_and_output_channels():
    _, analysis = groups_of(nets.depthwise_cnn())
    group = group_with(analysis, "expand.conv")
    assert {p.name for p in group.producers} == {"expand.conv", "dw.conv"}
    assert [c.name for c in group.consumers] == ["project.conv"]
    assert np.array_equal(group.classes["expand.relu.out"], group.classes["dw.conv.out"])
    residual = group_with(analysis, "stem.conv")
    assert {p.name for p in residual.producers} == {"stem.conv", "project.conv"}


def test_grouped_conv_ties_the_same_position_in_every_group():
    _, analysis = groups_of(nets.grouped_cnn())
    into = group_with(analysis, "a.conv")
    assert into.n_classes == 8  # 32 channels, position j of each of the 4 groups removed together
    classes = into.classes["a.relu.out"].reshape(4, 8)
    assert all(np.array_equal(classes[0], row) for row in classes)
    out = group_with(analysis, "g.conv")
    assert out.n_classes == 8 and out.prunable


def test_reshape_that_mixes_channels_blocks_its_group_with_a_reason():
    _, analysis = groups_of(nets.reshape_mixing_cnn())
    blocked = group_with(analysis, "a.conv")
    assert not blocked.prunable
    assert any("Reshape" in reason and "mixes channels" in reason for reason in blocked.blocked)
    assert group_with(analysis, "b.conv").prunable
    logits = group_with(analysis, "fc")
    assert any("graph output" in r for r in logits.blocked)


def test_blocked_group_is_left_whole_and_reported():
    model = nets.reshape_mixing_cnn()
    pruned, result, ctx = prune(model, ratio=0.5)
    shapes = weight_shapes(pruned)
    assert shapes["a.conv"][0] == 16  # the shuffled channels stay
    assert shapes["b.conv"] == (8, 16, 3, 3)
    report = ctx.artifacts["report:channel-prune"]
    reasons = [r for b in report["blocked"] for r in b["reasons"]]
    assert any("mixes channels" in r for r in reasons)
    run_model(pruned, nets.samples(model, 1)[0])


def test_unknown_op_blocks_the_channels_it_reads():
    model = nets.plain_cnn()
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            node.op_type = "LpNormalization"  # normalizes across channels: unknown to the analysis
            del node.attribute[:]
    _, analysis = groups_of(model)
    group = group_with(analysis, "a.conv")
    assert any("LpNormalization" in r and "not known" in r for r in group.blocked)


# -- removal ---------------------------------------------------------------------------------------


def test_removal_shrinks_weights_and_keeps_surviving_channels_bit_identical():
    model = nets.plain_cnn()
    pruned, result, ctx = prune(model, ratio=0.0, layer_ratios={"a.conv": 0.5}, reconstruct=False)
    assert result.changed
    shapes = weight_shapes(pruned)
    assert shapes["a.conv"] == (8, 3, 3, 3) and shapes["b.conv"] == (24, 8, 3, 3)
    kept = ctx.artifacts["channel-prune"]["kept"]["a.relu.out"]
    assert len(kept) == 8
    feeds = nets.samples(model, 2)
    original = capture(model, ["a.relu.out", "pool.out"], feeds)
    after = capture(pruned, ["a.relu.out", "pool.out"], feeds)
    for name in original:
        assert np.array_equal(after[name], original[name][:, kept]), name
    ops = [n.op_type for n in pruned.graph.node]
    assert ops == [n.op_type for n in model.graph.node]


def test_removing_channels_nobody_reads_changes_no_output():
    model = nets.plain_cnn()
    init = {i.name: i for i in model.graph.initializer}
    conv_b = next(n for n in model.graph.node if n.name == "b.conv")
    weight = onnx.numpy_helper.to_array(init[conv_b.input[1]]).copy()
    weight[:, 8:] = 0.0  # channels 8..15 of a.conv feed nothing
    init[conv_b.input[1]].CopyFrom(onnx.numpy_helper.from_array(weight, conv_b.input[1]))
    pruned, _, _ = prune(model, ratio=0.0, layer_ratios={"a.conv": 0.5}, importance="l1", reconstruct=False)
    assert weight_shapes(pruned)["a.conv"][0] == 8
    feeds = nets.samples(model, 1)[0]
    np.testing.assert_allclose(run_model(pruned, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", [nets.residual_cnn, nets.concat_cnn, nets.depthwise_cnn, nets.grouped_cnn])
def test_pruned_models_validate_run_and_shrink(build):
    model = build()
    pruned, result, ctx = prune(model, ratio=0.5, min_channels=2, round_to=2, reconstruct=False)
    onnx.checker.check_model(pruned, full_check=True)
    report = ctx.artifacts["report:channel-prune"]
    assert report["macs_after"] < report["macs_before"] and report["params_after"] < report["params_before"]
    out = run_model(pruned, nets.samples(model, 1)[0])["y"]
    assert out.shape == (1, 5) and np.isfinite(out).all()


def test_depthwise_group_attribute_and_split_sizes_follow_the_removal():
    pruned, _, _ = prune(nets.depthwise_cnn(), ratio=0.5, reconstruct=False)
    dw = next(n for n in pruned.graph.node if n.name == "dw.conv")
    group = next(a.i for a in dw.attribute if a.name == "group")
    assert group == 24 and weight_shapes(pruned)["dw.conv"] == (24, 1, 3, 3)
    pruned, _, _ = prune(nets.concat_cnn(), ratio=0.5, min_channels=2, round_to=2, reconstruct=False)
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    sizes = next(onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer if i.name == split.input[1])
    p_weight = weight_shapes(pruned)["p"]
    assert sizes.sum() == 12 and sizes.tolist() == [p_weight[1], p_weight[0]]  # p reads part one, its output meets part two


def test_flops_target_is_met():
    model = nets.residual_cnn()
    _, result, ctx = prune(model, flops_target=0.5, min_channels=2, round_to=2, reconstruct=False)
    report = ctx.artifacts["report:channel-prune"]
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    assert report["macs_after"] > 0.35 * report["macs_before"]  # not pruned far past the target


def test_skip_leaves_matching_groups_whole():
    pruned, _, ctx = prune(nets.plain_cnn(), ratio=0.5, skip=("a.*",), reconstruct=False)
    assert weight_shapes(pruned)["a.conv"][0] == 16
    assert weight_shapes(pruned)["b.conv"][0] == 16  # 24 * 0.5 rounded to a multiple of 8
    assert ctx.artifacts["report:channel-prune"]["skipped"][0]["producers"] == ["a.conv"]


# -- reconstruction --------------------------------------------------------------------------------


@pytest.mark.parametrize("importance", ["activation", "obs"])
def test_reconstruction_lowers_the_error_on_calibration_data(importance):
    model = nets.residual_cnn()
    calib = nets.samples(model, 16)
    plain, _, _ = prune(model, calib, ratio=0.5, importance=importance, reconstruct=False)
    refit, result, ctx = prune(model, calib, ratio=0.5, importance=importance)
    assert result.stats["layers_refit"] >= 3
    for fit in ctx.artifacts["report:channel-prune"]["reconstruction"]:
        assert fit["error_after"] < fit["error_before"]

    def error(candidate):
        ref = np.concatenate([run_model(model, f)["y"] for f in calib])
        out = np.concatenate([run_model(candidate, f)["y"] for f in calib])
        return np.linalg.norm(out - ref) / np.linalg.norm(ref)

    assert weight_shapes(refit) == weight_shapes(plain)
    assert error(refit) < 0.7 * error(plain)


def test_no_calibration_prunes_by_weight_norm_and_warns():
    _, result, ctx = prune(nets.plain_cnn(), ratio=0.5)
    assert result.changed and ctx.artifacts["report:channel-prune"]["criterion"] == "l2"
    assert any("no calibration data" in w for w in ctx.warnings)


def test_activation_importance_without_calibration_is_refused():
    with pytest.raises(CalibrationError, match="needs calibration data"):
        prune(nets.plain_cnn(), ratio=0.5, importance="activation")


@pytest.mark.parametrize(
    "options", [{"ratio": 0.3, "flops_target": 0.5}, {"ratio": 1.5}, {"flops_target": 0.0}, {"layer_ratios": {"a*": 2}}]
)
def test_bad_budgets_are_config_errors(options):
    with pytest.raises(ConfigError):
        prune(nets.plain_cnn(), **options)


def test_compile_with_prune_flag_end_to_end(tmp_path):
    model = nets.plain_cnn()
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feeds in enumerate(nets.samples(model, 6)):
        np.savez(calib / f"{i}.npz", **feeds)
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    from click.testing import CliRunner

    from onnxopt.cli import main

    out = tmp_path / "m.pruned.onnx"
    result = CliRunner().invoke(main, ["compile", str(source), "--target", "ort-fp32", "--prune", "0.5", "--calib", str(calib), "-o", str(out), "--no-profile", "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    pruned = onnx.load(out)
    assert weight_shapes(pruned)["b.conv"][0] < 24
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["artifacts"]["channel-prune"]["groups_pruned"] >= 2


def test_reshape_to_features_maps_each_channel_to_its_block_of_gemm_columns():
    model = nets.flatten_gemm_cnn(dead_channels=slice(8, 16))
    calib = nets.samples(model, 4)
    pruned, _, ctx = prune(model, calib, ratio=0.5, importance="activation", reconstruct=False)
    assert ctx.artifacts["channel-prune"]["kept"]["a.relu.out"] == list(range(8))
    assert weight_shapes(pruned)["fc"] == (5, 128)
    reshape = next(n for n in pruned.graph.node if n.op_type == "Reshape")
    shape = next(onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer if i.name == reshape.input[1])
    assert shape.tolist() == [1, 128]
    for feeds in calib:
        np.testing.assert_allclose(run_model(pruned, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_obs_finds_a_redundant_channel_and_reconstruction_makes_its_removal_exact():
    model = nets.duplicate_channel_cnn()  # channel 5 of a duplicates channel 2
    calib = nets.samples(model, 6)
    pruned, _, ctx = prune(model, calib, ratio=0.0, layer_ratios={"a": 0.125}, importance="obs", round_to=1, min_channels=1)
    kept = ctx.artifacts["channel-prune"]["kept"]["a.relu.out"]
    assert len(kept) == 7 and (2 in kept) != (5 in kept)
    for feeds in calib:
        np.testing.assert_allclose(run_model(pruned, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-3, atol=1e-4)


def test_a_view_flatten_with_symbolic_size_leaves_the_classifier_input_prunable():
    model = nets.view_flatten_cnn()
    graph, analysis = groups_of(model)
    reshape = next(n for n in graph.nodes if n.op == "Reshape")
    group = group_with(analysis, "a.conv")
    assert group.prunable and [c.name for c in group.consumers] == ["fc"]
    assert reshape.outputs[0].shape[1] == 16  # the flattened size, now known
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    pruned, _, ctx = prune(model, calib, ratio=0.5, importance="obs", reconstruct=False)
    assert ctx.artifacts["channel-prune"]["kept"]["a.relu.out"] == list(range(8))  # the channels fc ignores went
    assert weight_shapes(pruned) == {"a.conv": (8, 3, 3, 3), "fc": (5, 8)}
    for feeds in calib + [{"x": rng.standard_normal((5, 3, 8, 8)).astype(np.float32)}]:
        np.testing.assert_allclose(run_model(pruned, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_refit_downstream_also_refits_depthwise_and_later_layers_against_the_teacher():
    model = nets.depthwise_cnn()
    calib = nets.samples(model, 16)
    _, _, ctx = prune(model, calib, ratio=0.25, skip=("stem.*",), refit_downstream="conv", min_channels=4, round_to=4)
    fits = {f["layer"]: f for f in ctx.artifacts["report:channel-prune"]["reconstruction"]}
    assert fits["dw.conv"]["method"] == "depthwise"  # the pruned block's depthwise conv, per channel
    assert fits["project.conv"]["error_after"] < fits["project.conv"]["error_before"]
    assert set(fits) == {"expand.conv", "dw.conv", "project.conv"}  # from the first pruned layer on; the Gemm is not a Conv
    for fit in fits.values():
        assert fit["error_after"] <= fit["error_before"]


def test_protect_classifier_leaves_the_classifier_input_whole_under_a_uniform_ratio():
    model = nets.view_flatten_cnn()
    rng = np.random.default_rng(5)
    calib = [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    pruned, result, ctx = prune(model, calib, ratio=0.5, protect_classifier=True, reconstruct=False)
    report = ctx.artifacts["report:channel-prune"]
    assert not result.changed and weight_shapes(pruned) == weight_shapes(model)
    assert [s["producers"] for s in report["skipped"]] == [["a.conv"]]


