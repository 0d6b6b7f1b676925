"""drop-blocks: which Adds are removable residual blocks, what removal leaves, the measured choice, the refit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.errors import ConfigError
from onnxopt.graphs import export_model, import_graph
from onnxopt.passes.prune.blocks import DropBlocks, remove_block, residual_blocks
from onnxopt.passes.quantize.fidelity import relative_error, run_all
from onnxopt.pipeline import PassContext
from tests.passes.prune import prune_graphs as nets


def two_block_cnn(seed: int = 0, quiet_block: str | None = None):
    """stem -> block1 -> block2 -> conv -> head, each block relu(x + bn(conv(relu(bn(conv(x)))))).

    `quiet_block` ("b1" or "b2") scales that block's last BatchNorm to almost nothing: its
    removal barely changes the outputs, so the measured choice must pick it."""
    n = nets.Net(seed)
    stem = n.conv_bn_relu("x", 3, 16, name="stem")
    x = stem
    for name in ("b1", "b2"):
        y = n.conv_bn_relu(x, 16, 16, name=f"{name}.c1")
        y = n.bn(n.conv(y, 16, 16, name=f"{name}.c2.conv"), 16, f"{name}.c2.bn")
        if name == quiet_block:
            n.inits[-4].CopyFrom(_scaled(n.inits[-4], 1e-3))  # the BN's scale
            n.inits[-3].CopyFrom(_scaled(n.inits[-3], 1e-3))  # and shift
        x = n.op("Relu", [n.op("Add", [y, x], f"{name}.add")], f"{name}.relu")
    y = n.conv_bn_relu(x, 16, 16, name="tail")
    return onnx.shape_inference.infer_shapes(n.model(n.head(y, 16)))  # the pass runs on shape-annotated graphs


def _scaled(tensor, factor):
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), tensor.name)


def run_pass(model, calibration=None, **options):
    graph = import_graph(model)
    ctx = PassContext(teacher=model, calibration=onnxopt.calibration.open_calibration(calibration, model) if calibration else None)
    result = DropBlocks(**options).run(graph, ctx)
    return export_model(graph, model), result, ctx


def test_finds_identity_blocks_and_only_those():
    blocks = residual_blocks(import_graph(two_block_cnn()))
    assert sorted(b.name for b in blocks) == ["b1.add", "b2.add"]
    b1 = next(b for b in blocks if b.name == "b1.add")
    assert b1.shortcut == "stem.relu.out" and b1.add_output == "b1.add.out" and len(b1.branch_outputs) == 5  # conv, bn, relu, conv, bn
    for other in (nets.plain_cnn(), nets.concat_cnn()):
        assert residual_blocks(import_graph(onnx.shape_inference.infer_shapes(other))) == []


def test_removing_a_block_leaves_its_shortcut():
    model = two_block_cnn()
    graph = import_graph(model)
    block = next(b for b in residual_blocks(graph) if b.name == "b2.add")
    remove_block(graph, block)
    after = export_model(graph)
    ops = [n.op_type for n in after.graph.node]
    before_ops = [n.op_type for n in model.graph.node]
    assert ops.count("Add") == 1 and ops.count("Conv") == before_ops.count("Conv") - 2
    assert ops.count("Relu") == before_ops.count("Relu") - 2  # the branch's Relu and Relu(add): the shortcut is a Relu output already
    tail = next(n for n in after.graph.node if n.name == "tail.conv")
    assert tail.input[0] == "b1.relu.out"


def test_the_quiet_block_goes_first_and_nearly_exactly():
    for quiet in ("b1", "b2"):
        model = two_block_cnn(quiet_block=quiet)
        calib = nets.samples(model, 8)
        out, result, ctx = run_pass(model, calib, count=1, reconstruct=False)
        report = ctx.artifacts["report:drop-blocks"]
        assert [r["block"] for r in report["removed"]] == [f"{quiet}.add"]
        other = "b2.add" if quiet == "b1" else "b1.add"
        assert report["removed"][0]["output_error"] < 0.01 * report["removed"][0]["others"][other]
        held_out = nets.samples(model, 4, seed=7)
        assert relative_error(run_all(model, held_out), run_all(out, held_out)) < 1e-4
        assert result.changed and result.stats["macs_after"] < result.stats["macs_before"]


def test_refit_recovers_part_of_the_error():
    model = two_block_cnn(seed=2)
    calib = nets.samples(model, 16)
    held_out = nets.samples(model, 8, seed=9)
    plain, _, _ = run_pass(model, calib, count=1, reconstruct=False)
    refit, _, ctx = run_pass(model, calib, count=1, reconstruct=True)
    report = ctx.artifacts["report:drop-blocks"]
    assert report["layers_refit"] and report["output_error_after_refit"] < report["output_error_before_refit"]
    reference = run_all(model, held_out)
    assert relative_error(reference, run_all(refit, held_out)) < relative_error(reference, run_all(plain, held_out))


def test_two_blocks_and_nothing_to_drop():
    model = two_block_cnn()
    out, result, ctx = run_pass(model, nets.samples(model, 8), count=2, reconstruct=False)
    assert [n.op_type for n in out.graph.node].count("Add") == 0 and result.stats["removed"] == 2
    plain = onnx.shape_inference.infer_shapes(nets.plain_cnn())
    out, result, ctx = run_pass(plain, nets.samples(plain, 4), count=1)
    assert not result.changed and ctx.artifacts["report:drop-blocks"]["why"] == "no residual block found"


def test_needs_calibration_and_a_sane_count():
    with pytest.raises(ConfigError, match="calibration"):
        run_pass(two_block_cnn(), None, count=1)
    with pytest.raises(ConfigError, match="count"):
        run_pass(two_block_cnn(), None, count=-1)


def test_cli_flag_adds_the_pass(tmp_path):
    from click.testing import CliRunner

    from onnxopt.cli import main

    model = two_block_cnn()
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "calib.npz", x=np.stack([s["x"][0] for s in nets.samples(model, 8)]))
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["compile", str(src), "--drop-blocks", "1", "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--no-profile", "-q"])
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in onnx.load(out).graph.node].count("Add") == 1


def test_unnamed_nodes_are_found_and_removed_by_their_tensors():
    model = two_block_cnn(quiet_block="b2")
    for node in model.graph.node:
        node.name = ""  # some exporters name no node
    blocks = residual_blocks(import_graph(model))
    assert sorted(b.name for b in blocks) == ["b1.add.out", "b2.add.out"]  # the report falls back to the Add's output
    out, result, ctx = run_pass(model, nets.samples(model, 8), count=1)
    assert [r["block"] for r in ctx.artifacts["report:drop-blocks"]["removed"]] == ["b2.add.out"]
    assert [n.op_type for n in out.graph.node].count("Add") == 1
