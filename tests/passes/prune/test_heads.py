"""Attention heads as prunable groups: recognition on exported patterns, exact removal, blocking with reasons."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import onnxopt
from onnxopt.graphs import constant_input_value, export_model, import_graph
from onnxopt.models.builders import transformer_block
from onnxopt.passes.prune import ChannelPrune
from onnxopt.passes.prune.heads import find_attention, remove_heads, token_mask_input
from onnxopt.pipeline import PassContext, get_pass
from onnxopt.runtime import run_model
from tests.passes.prune.attention_models import feeds, zero_head

ZOO = Path(os.environ.get("ONNXOPT_ZOO", Path.home() / ".cache" / "onnxopt" / "zoo"))


def inferred(model: onnx.ModelProto) -> gs.Graph:
    graph = import_graph(model)
    get_pass("shape-inference")(symbolic=False).run(graph, PassContext())
    return graph


@pytest.mark.parametrize("opset", [14, 17, 18])
def test_transformer_block_heads_are_found_at_exporter_opsets(opset):
    groups, blocked = find_attention(inferred(transformer_block(opset=opset)))
    assert blocked == []
    assert len(groups) == 1
    group = groups[0]
    assert (group.heads, group.head_dim) == (4, 8)
    assert [p.matmul.name for p in group.projections] == ["attn.query.matmul", "attn.key.matmul", "attn.value.matmul"]
    assert all(p.bias is not None for p in group.projections)
    assert group.output.name == "attn.output.matmul"
    assert len(group.split_entries) == 3 and group.merge_entry is not None


def test_removing_a_head_whose_output_rows_are_zero_is_exact():
    model = zero_head(transformer_block(), head=2)
    graph = inferred(model)
    (group,), _ = find_attention(graph)
    remove_heads(graph, group, np.array([0, 1, 3]))
    graph.cleanup().toposort()
    pruned = export_model(graph, model)
    onnx.checker.check_model(pruned)
    weights = {n.name: constant_input_value(n.inputs[1]).shape for n in graph.nodes if n.op == "MatMul" and constant_input_value(n.inputs[1]) is not None}
    assert weights["attn.query.matmul"] == (32, 24) and weights["attn.value.matmul"] == (32, 24)
    assert weights["attn.output.matmul"] == (24, 32)
    reshapes = [constant_input_value(n.inputs[1]).tolist() for n in graph.nodes if n.op == "Reshape"]
    assert sorted(reshapes) == [[1, 8, 3, 8]] * 3 + [[1, 8, 24]]
    for seed in range(3):
        expected, actual = run_model(model, feeds(seed))["y"], run_model(pruned, feeds(seed))["y"]
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_a_non_constant_per_head_mask_blocks_the_block_with_a_reason():
    model = transformer_block()
    graph = import_graph(model)
    scaled = next(n for n in graph.nodes if n.name == "attn.scale_div")
    mask = gs.Variable("mask", dtype=np.float32, shape=[1, 4, 8, 8])
    masked = gs.Variable("masked", dtype=np.float32)
    softmax = next(n for n in graph.nodes if n.op == "Softmax")
    softmax.inputs[0] = masked
    graph.nodes.append(gs.Node("Add", "attn.mask_add", inputs=[scaled.outputs[0], mask], outputs=[masked]))
    graph.inputs.append(mask)
    graph.toposort()
    groups, blocked = find_attention(inferred(export_model(graph)))
    assert groups == []
    assert len(blocked) == 1 and "per-head axis that is not constant" in blocked[0]


def test_a_fused_attention_op_is_reported_not_pruned():
    graph = gs.Graph(opset=17)
    x = gs.Variable("x", dtype=np.float32, shape=[1, 8, 32])
    y = gs.Variable("y", dtype=np.float32, shape=[1, 8, 32])
    graph.nodes.append(gs.Node("Attention", "fused", inputs=[x], outputs=[y], domain="com.microsoft"))
    graph.inputs, graph.outputs = [x], [y]
    groups, blocked = find_attention(graph)
    assert groups == [] and "fused attention op" in blocked[0]


def calibration(n=24, seed=1):
    return [feeds(seed + i) for i in range(n)]


def test_pass_prunes_heads_at_a_ratio_and_refits_the_output_projection():
    model = transformer_block()
    graph = import_graph(model)
    ctx = PassContext(teacher=model, calibration=onnxopt.calibration.open_calibration(calibration(), model))
    result = ChannelPrune(ratio=0.25, min_channels=8).run(graph, ctx)
    assert result.changed and result.stats["heads_removed"] == 1
    pruned = export_model(graph, model)
    onnx.checker.check_model(pruned)
    report = ctx.artifacts["report:channel-prune"]
    (entry,) = report["attention"]
    assert (entry["heads"], entry["kept"]) == (4, 3)
    assert entry["error_after_refit"] <= entry["error_before_refit"]
    reshapes = sorted(constant_input_value(n.inputs[1]).tolist() for n in graph.nodes if n.op == "Reshape")
    assert reshapes == [[1, 8, 3, 8]] * 3 + [[1, 8, 24]]
    assert token_mask_input(graph, find_attention(graph)[0]) is None  # the block has no run-time mask
    out = run_model(pruned, feeds(99))["y"]
    ref = run_model(model, feeds(99))["y"]
    assert out.shape == ref.shape and np.isfinite(out).all()


def test_downstream_refit_leaves_out_projections_that_lost_head_columns():
    """Their outputs are narrower than the teacher's, so there is nothing to fit them to (this
    raised a shape error on MiniLM with refit_downstream=all)."""
    model = transformer_block(layers=2)  # the second layer's projections come after the first's pruned FFN
    graph = import_graph(model)
    ctx = PassContext(teacher=model, calibration=onnxopt.calibration.open_calibration(calibration(), model))
    result = ChannelPrune(ratio=0.25, min_channels=8, refit_downstream="all").run(graph, ctx)
    assert result.changed and result.stats["heads_removed"] == 2
    pruned = export_model(graph, model)
    fitted = {fit["layer"] for fit in ctx.artifacts["report:channel-prune"]["reconstruction"]}
    blocks, _ = find_attention(graph)
    assert len(blocks) == 2
    for block in blocks:
        assert block.output.name in fitted and not fitted & {p.matmul.name for p in block.projections}
    out, ref = run_model(pruned, feeds(99))["y"], run_model(model, feeds(99))["y"]
    assert out.shape == ref.shape and np.isfinite(out).all()


def test_global_budget_spreads_macs_over_heads_and_ffn_channels():
    model = transformer_block()
    graph = import_graph(model)
    ctx = PassContext(teacher=model, calibration=onnxopt.calibration.open_calibration(calibration(32), model))
    result = ChannelPrune(flops_target=0.7, min_channels=8, round_to=8, probe_samples=16).run(graph, ctx)
    report = ctx.artifacts["report:channel-prune"]
    assert result.changed
    assert report["macs_after"] <= 0.7 * report["macs_before"] * 1.001
    kinds = {row["kind"] for row in report["allocation"]}
    assert kinds == {"heads", "channels"}
    for row in report["allocation"]:
        assert row["kept"] <= row["size"] and row["predicted_output_error"] >= 0
        if row["kind"] == "channels" and row["kept"] < row["size"]:
            assert row["kept"] % 8 == 0
    onnx.checker.check_model(export_model(graph, model))


def test_iterative_global_search_meets_the_budget_and_reports_what_it_pruned():
    model = transformer_block()
    graph = import_graph(model)
    samples = calibration(32)
    ctx = PassContext(teacher=model, calibration=onnxopt.calibration.open_calibration(samples, model))
    result = ChannelPrune(flops_target=0.6, min_channels=8, round_to=8, probe_samples=16, search_rounds=3).run(graph, ctx)
    report = ctx.artifacts["report:channel-prune"]
    assert result.changed and report["macs_after"] <= 0.6 * report["macs_before"] * 1.001
    pruned = export_model(graph, model)
    onnx.checker.check_model(pruned)
    # every pruned group is named with its kind, kept size and the refit error of the layers reading it
    by_kind = {p["kind"]: p for p in report["pruned"]}
    assert set(by_kind) <= {"heads", "channels"} and report["pruned"]
    for entry in report["pruned"]:
        assert entry["kept"] < entry["size"]
        for fit in entry["refit"]:
            assert fit["error_after"] <= fit["error_before"]
    if "heads" in by_kind:
        kept_heads = by_kind["heads"]["kept"]
        reshapes = sorted(constant_input_value(n.inputs[1]).tolist() for n in graph.nodes if n.op == "Reshape")
        assert reshapes == [[1, 8, kept_heads, 8]] * 3 + [[1, 8, kept_heads * 8]]
        # the Q/K/V and context channel groups are pruned as heads, not listed as blocked
        assert report["blocked_as_channels_pruned_as_heads"]
        assert not any("attn." in str(b["producers"]) for b in report["blocked"])
    if "channels" in by_kind:
        assert by_kind["channels"]["kept"] % 8 == 0
    # numbers: the pruned block against the original on held-out inputs, and the search's own estimate
    held_out = [feeds(500 + i) for i in range(16)]
    err = sum(float(np.sum((run_model(pruned, f)["y"] - run_model(model, f)["y"]) ** 2)) for f in held_out)
    err /= sum(float(np.sum(run_model(model, f)["y"] ** 2)) for f in held_out)
    assert 0 < err < 0.25
    assert 0 < report["predicted_joint_output_error"] < 0.5


def test_uniform_allocation_leaves_heads_alone_for_a_flops_target():
    model = transformer_block()
    graph = import_graph(model)
    ctx = PassContext(teacher=model, calibration=onnxopt.calibration.open_calibration(calibration(), model))
    ChannelPrune(flops_target=0.8, allocation="uniform", min_channels=8).run(graph, ctx)
    report = ctx.artifacts["report:channel-prune"]
    assert [a["kept"] for a in report["attention"]] == [4]
    assert "allocation" not in report


@pytest.mark.real
def test_minilm_heads_are_found_and_removing_zeroed_heads_is_exact():
    path = ZOO / "minilm" / "model.onnx"
    if not path.exists():
        pytest.skip(f"{path} not materialized; run `python -m onnxopt.models.zoo`")
    model = onnx.load(path)
    graph = inferred(model)
    groups, blocked = find_attention(graph)
    assert blocked == [] and len(groups) == 6
    assert all((g.heads, g.head_dim) == (12, 32) for g in groups)
    assert token_mask_input(graph, groups) == "attention_mask"
    for group in groups:  # silence heads 0 and 5 of every layer, then remove them
        w = constant_input_value(group.output.inputs[1]).copy()
        w[group.columns(np.array([0, 5]))] = 0
        group.output.inputs[1] = gs.Constant(group.output.inputs[1].name + "_zeroed", w)
    silenced = export_model(graph, model)
    for group in groups:
        remove_heads(graph, group, np.array([h for h in range(12) if h not in (0, 5)]))
    graph.cleanup().toposort()
    pruned = export_model(graph, model)
    sample = dict(np.load(min(glob.glob(str(ZOO / "minilm" / "eval" / "*.npz")))))
    expected = run_model(silenced, sample)["last_hidden_state"]
    actual = run_model(pruned, sample)["last_hidden_state"]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
