"""Bad inputs through the real CLI: one clear line on stderr, exit code 2, no output file, no temp files.

Each case builds its files in its own folder; all cases run as subprocesses in parallel once per
module, and each test checks one case's exit code, message and folder contents.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import init, tensor


def model_of(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "bad", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def relu_net(opset=17):
    w = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    return model_of(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [tensor("x", ["N", 3])],
        [tensor("y", ["N", 3])],
        [init("w", w)],
        opset=opset,
    )


def write(folder: Path, model_or_bytes) -> Path:
    path = folder / "model.onnx"
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    path.write_bytes(data)
    return path


def external(folder: Path, location: str, keep_file: bool = True) -> Path:
    """relu_net with its weight in external data, then the location rewritten."""
    model = relu_net()
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    onnx.save_model(model, str(folder / "model.onnx"))
    raw = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for t in raw.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    if not keep_file:
        (folder / "w.bin").unlink()
    return write(folder, raw)


# Each builder makes its files in `folder` and returns (model path, extra CLI args).


def truncated(folder):
    big = model_of([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [1, 256])], [tensor("y", [1, 256])], [init("w", np.ones((256, 256), np.float32))])
    data = big.SerializeToString()
    return write(folder, data[: len(data) // 2]), []


def random_bytes(folder):
    return write(folder, np.random.default_rng(1).bytes(4096)), []


def tensor_proto(folder):
    return write(folder, numpy_helper.from_array(np.ones((4, 4), np.float32), "w").SerializeToString()), []


def graph_proto(folder):
    return write(folder, relu_net().graph.SerializeToString()), []


def empty_file(folder):
    return write(folder, b""), []


def cycle(folder):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["b"], name="relu")]
    return write(folder, model_of(nodes, [tensor("x", [1, 3])], [tensor("a", [1, 3])])), []


def duplicate_names(folder):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"), helper.make_node("Neg", ["x"], ["a"], name="second"), helper.make_node("Abs", ["a"], ["y"])]
    return write(folder, model_of(nodes, [tensor("x", [1, 3])], [tensor("y", [1, 3])])), []


def dangling_input(folder):
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")]
    return write(folder, model_of(nodes, [tensor("x", [1, 3])], [tensor("y", [1, 3])])), []


def conv_weight_mismatch(folder):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    model = model_of(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 6, 6])], [init("w", np.ones((4, 5, 3, 3), np.float32))])
    return write(folder, model), []


def matmul_weight_mismatch(folder):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = model_of(nodes, [tensor("x", [1, 3])], [tensor("y", [1, 4])], [init("w", np.ones((5, 4), np.float32))])
    return write(folder, model), []


def weight_short_raw_data(folder):
    """A large weight whose stored bytes end early (a file cut or patched by hand)."""
    model = model_of([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [1, 64])], [tensor("y", [1, 64])], [init("w", np.ones((64, 64), np.float32))])
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    return write(folder, model), []


def weight_short_float_data(folder):
    model = model_of([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", [1, 64])], [tensor("y", [1, 64])])
    w = model.graph.initializer.add()
    w.name, w.data_type = "w", onnx.TensorProto.FLOAT
    w.dims.extend([64, 64])
    w.float_data.extend([1.0] * (64 * 64 - 1))
    return write(folder, model), []


def constant_node_short_data(folder):
    """A large weight held in a Constant node (Paddle/TF style) whose bytes end early."""
    value = numpy_helper.from_array(np.ones((64, 64), np.float32))
    value.raw_data = value.raw_data[:-8]
    nodes = [helper.make_node("Constant", [], ["w"], value=value, name="weights"), helper.make_node("MatMul", ["x", "w"], ["y"])]
    return write(folder, model_of(nodes, [tensor("x", [1, 64])], [tensor("y", [1, 64])])), []


def nan_weights(folder):
    model = relu_net()
    model.graph.initializer[0].CopyFrom(init("w", np.array([[np.nan, 1, 2], [np.inf, 0, 1], [1, 1, -np.inf]], np.float32)))
    return write(folder, model), []


def old_opset(folder):
    """Opset 1's Pad has no adapter in onnx's version converter: the upgrade is refused with its reason."""
    pad = helper.make_node("Pad", ["x"], ["y"], paddings=[0, 1, 0, 1])
    return write(folder, model_of([pad], [tensor("x", [1, 3])], [tensor("y", [1, 5])], opset=1)), []


def future_opset(folder):
    return write(folder, model_of([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 3])], [tensor("y", [1, 3])], opset=onnx.defs.onnx_opset_version() + 5)), []


def custom_domain_declared(folder):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["i"]), helper.make_node("Swish", ["i"], ["y"], domain="com.acme")]
    return write(folder, model_of(nodes, [tensor("x", ["N", 3])], [tensor("y", ["N", 3])], domains=["com.acme"])), []


def custom_domain_undeclared(folder):
    nodes = [helper.make_node("Swish", ["x"], ["y"], domain="com.acme")]
    return write(folder, model_of(nodes, [tensor("x", [1, 3])], [tensor("y", [1, 3])])), []


def external_missing(folder):
    return external(folder, "w.bin", keep_file=False), []


def external_absolute(folder):
    return external(folder, str(folder.parent / "w.bin")), []


def external_dotdot(folder):
    (folder.parent / "secret.bin").write_bytes(b"\0" * 64)
    return external(folder, "../secret.bin"), []


def external_symlink_out(folder):
    outside = folder.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "w.bin").write_bytes(b"\0" * 64)
    (folder / "link").symlink_to(outside)
    return external(folder, "link/w.bin"), []


def absurd_constant_of_shape(folder):
    one = numpy_helper.from_array(np.ones(1, np.float32))
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["c"], value=one), helper.make_node("Add", ["x", "c"], ["y"])]
    model = model_of(nodes, [tensor("x", [1])], [tensor("y", ["a", "b", "c"])], [init("s", np.array([10**5] * 3, np.int64))])
    return write(folder, model), []


def absurd_input(folder):
    return write(folder, model_of([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [10**6, 10**6])], [tensor("y", [10**6, 10**6])])), []


def calib_model(folder):
    return write(folder, relu_net())


def calib_wrong_name(folder):
    (folder / "calib").mkdir()
    np.savez(folder / "calib" / "0.npz", image=np.zeros((1, 3), np.float32))
    return calib_model(folder), ["--calib", folder / "calib"]


def calib_wrong_shape(folder):
    np.savez(folder / "calib.npz", x=np.zeros((4, 5), np.float32))
    return calib_model(folder), ["--calib", folder / "calib.npz"]


def calib_wrong_rank(folder):
    (folder / "calib").mkdir()
    np.save(folder / "calib" / "0.npy", np.zeros((3,), np.float32))
    return calib_model(folder), ["--calib", folder / "calib"]


def calib_wrong_dtype(folder):
    (folder / "calib").mkdir()
    np.savez(folder / "calib" / "0.npz", x=np.array([["a", "b", "c"]]))
    return calib_model(folder), ["--calib", folder / "calib"]


class Trap:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def calib_pickled_npy(folder):
    (folder / "calib").mkdir()
    with open(folder / "calib" / "0.npy", "wb") as handle:
        np.save(handle, np.array([Trap(folder / "PICKLE_WAS_LOADED")], dtype=object), allow_pickle=True)
    return calib_model(folder), ["--calib", folder / "calib"]


def calib_pickled_npz(folder):
    np.savez(folder / "calib.npz", x=np.array([Trap(folder / "PICKLE_WAS_LOADED")], dtype=object))
    return calib_model(folder), ["--calib", folder / "calib.npz"]


# (builder, exit code, text the message must contain)
CASES = {
    "truncated": (truncated, 2, "is not an ONNX model (protobuf parse failed: Error parsing message with type 'onnx.ModelProto'"),
    "random-bytes": (random_bytes, 2, "not an ONNX model"),
    "tensor-proto": (tensor_proto, 2, "not an ONNX model"),
    "graph-proto": (graph_proto, 2, "not an ONNX model (no IR version or graph)"),
    "empty-file": (empty_file, 2, "is empty"),
    "cycle": (cycle, 2, "has a cycle: node 'add' (Add) -> node 'relu' (Relu) -> node 'add' (Add)"),
    "duplicate-names": (duplicate_names, 2, "tensor 'a' in the graph is produced by both node 'first' (Relu) and node 'second' (Neg)"),
    "dangling-input": (dangling_input, 2, "node 'add' (Add) in the graph reads tensor 'ghost', which no node, graph input or initializer produces"),
    "conv-weight-mismatch": (conv_weight_mismatch, 2, "node 'conv' (Conv) has weight 'w' of shape 4x5x3x3 for an input with 3 channels"),
    "matmul-weight-mismatch": (matmul_weight_mismatch, 2, "shapes or types do not fit together: (op_type:MatMul, node name: mm)"),
    "weight-short-raw-data": (weight_short_raw_data, 2, "initializer 'w' holds 16380 bytes of data but its shape 64x64 needs 16384"),
    "weight-short-float-data": (weight_short_float_data, 2, "initializer 'w' holds 4095 values of data but its shape 64x64 needs 4096"),
    "constant-node-short-data": (constant_node_short_data, 2, "the value of Constant node 'weights' holds 16376 bytes of data but its shape 64x64 needs 16384"),
    "old-opset": (old_opset, 2, "opset 1 is older than 7 and onnx's version converter cannot upgrade it (No Adapter From Version 1 for Pad)"),
    "future-opset": (future_opset, 2, "newer than this onnx package knows"),
    "custom-domain-undeclared": (custom_domain_undeclared, 2, "Swish node #0 is in domain 'com.acme', which the model does not import"),
    "external-missing": (external_missing, 2, "external data file 'w.bin' for tensor 'w' is missing"),
    "external-absolute": (external_absolute, 2, "only paths inside the model's folder are allowed"),
    "external-dotdot": (external_dotdot, 2, "outside the model's folder"),
    "external-symlink-out": (external_symlink_out, 2, "outside the model's folder"),
    "absurd-constant-of-shape": (absurd_constant_of_shape, 2, "tensor 'c' has shape 100000x100000x100000"),
    "absurd-input": (absurd_input, 2, "tensor 'x' has shape 1000000x1000000"),
    "calib-wrong-name": (calib_wrong_name, 2, "missing input(s) x; unknown name(s) image"),
    "calib-wrong-shape": (calib_wrong_shape, 2, "input x has shape 1x5, the model wants ?x3"),
    "calib-wrong-rank": (calib_wrong_rank, 2, "the model wants rank 2"),
    "calib-wrong-dtype": (calib_wrong_dtype, 2, "the model wants float32"),
    "calib-pickled-npy": (calib_pickled_npy, 2, "not a readable .npy array: it holds pickled Python objects, which onnxopt never loads"),
    "calib-pickled-npz": (calib_pickled_npz, 2, "not a readable .npz archive: it holds pickled Python objects, which onnxopt never loads"),
    # valid models that must survive: a warning, exit 0, an output
    "nan-weights": (nan_weights, 0, "weights w hold NaN or Inf values"),
    "custom-domain-declared": (custom_domain_declared, 0, "numeric verification skipped"),
}


def _run_case(root: Path, name: str):
    builder = CASES[name][0]
    folder, tmp = root / name / "model", root / name / "tmp"
    folder.mkdir(parents=True)
    tmp.mkdir()
    model_path, extra = builder(folder)
    before = sorted(os.listdir(folder))
    out = folder / "out.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxopt.cli", "compile", str(model_path), "-o", str(out), "--no-profile", "-q", *map(str, extra)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp)},
        cwd=folder,  # litter in the working directory shows up in the listing too
    )
    return proc, before, sorted(os.listdir(folder)) + _leftovers(tmp), folder


def _leftovers(tmp: Path) -> list[str]:
    """Temporary files left behind (onnxruntime's own `.ses` session marker is not ours)."""
    return [f"tmp/{name}" for name in sorted(os.listdir(tmp)) if name != ".ses"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run_case, root, name) for name in CASES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[1] == 2])
def test_bad_input_fails_cleanly(results, name):
    proc, before, after, folder = results[name]
    expected = CASES[name][2]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("onnxopt: error: ") and expected in lines[0], lines[0]
    assert "internal error" not in lines[0] and "Traceback" not in proc.stderr
    assert after == before, "the failed compile left files behind"
    assert not (folder / "out.onnx").exists() and not (folder / "PICKLE_WAS_LOADED").exists()


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[1] == 0])
def test_odd_but_valid_model_compiles_with_a_warning(results, name):
    proc, before, after, folder = results[name]
    assert proc.returncode == 0, proc.stderr
    assert CASES[name][2] in proc.stdout
    assert after == sorted(before + ["out.onnx"])
    assert proc.stderr.strip() == ""


def test_custom_domain_node_is_kept(results):
    folder = results["custom-domain-declared"][3]
    model = onnx.load(str(folder / "out.onnx"))
    assert [n.op_type for n in model.graph.node] == ["Relu", "Swish"]
    assert [n.domain for n in model.graph.node] == ["", "com.acme"]
    assert {o.domain for o in model.opset_import} == {"", "com.acme"}


def test_nan_weights_survive(results):
    folder = results["nan-weights"][3]
    model = onnx.load(str(folder / "out.onnx"))
    weight = numpy_helper.to_array(model.graph.initializer[0])
    assert np.isnan(weight[0, 0]) and np.isposinf(weight[1, 0]) and np.isneginf(weight[2, 2])
