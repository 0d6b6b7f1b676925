"""Models built in code for the robustness tests: a feature-rich one and a slow-to-compile one."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.conftest import init, tensor


def rich_model() -> onnx.ModelProto:
    """Conv+BN+Relu, Constant nodes, duplicated and shared weights, Identity/Dropout, a dead branch,
    a static-shape sub-graph, dynamic batch, and an If whose branches read outer tensors."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    bias = np.full((1, 8, 1, 1), 0.25, np.float32)
    branch = lambda op, name: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["pooled"], [f"{name}_y"])], name, [], [helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, None)]
    )
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Identity", ["r"], ["r_id"]),
        helper.make_node("Dropout", ["r_id"], ["d"]),
        helper.make_node("Add", ["d", "bias1"], ["a1"]),
        helper.make_node("Mul", ["a1", "bias2"], ["a2"]),
        helper.make_node("Neg", ["a1"], ["dead"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["pooled"]),
        helper.make_node("Shape", ["pooled"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("ReduceMean", ["x"], ["mean_x"], keepdims=0),
        helper.make_node("Greater", ["mean_x", "zero_f"], ["cond"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=branch("Relu", "then"), else_branch=branch("Sigmoid", "else")),
        helper.make_node("Flatten", ["branch"], ["branch_flat"]),
        helper.make_node("Add", ["flat", "branch_flat"], ["y"]),
    ]
    inits = [
        init("gamma", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        init("beta", rng.standard_normal(8).astype(np.float32)),
        init("mean", rng.standard_normal(8).astype(np.float32)),
        init("var", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        init("bias1", bias),
        init("bias2", bias.copy()),
        init("zero", np.array(0, np.int64)),
        init("axes0", np.array([0], np.int64)),
        init("minus1", np.array([-1], np.int64)),
        init("zero_f", np.array(0.0, np.float32)),
    ]
    graph = helper.make_graph(nodes, "rich", [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def slow_model(blocks: int = 300, width: int = 64) -> onnx.ModelProto:
    """A long MatMul/Add/Identity/Tanh chain: seconds of shape inference and cleanup."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(blocks):
        inits.append(init(f"w{i}", (rng.standard_normal((width, width)) * 0.1).astype(np.float32)))
        inits.append(init(f"b{i}", rng.standard_normal(width).astype(np.float32)))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Identity", [f"a{i}"], [f"i{i}"]),
            helper.make_node("Tanh", [f"i{i}"], [f"t{i}"]),
        ]
        prev = f"t{i}"
    graph = helper.make_graph(nodes, "slow", [tensor("x", ["N", width])], [tensor(prev, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_big_model(folder, weights: int = 3, rows: int = 4096, cols: int = 45_000, chunk_rows: int = 256):
    """`weights` float32 [rows, cols] MatMul weights in one external-data file, written in chunks so
    the test never holds more than a chunk of them; returns (model path, total weight bytes).

    y = x @ W0 + x @ W1 + ...; W_k[r, c] = ((r * 7 + c * 3 + k) % 17 - 8) / 256, exact in float32.
    """
    from pathlib import Path

    folder = Path(folder)
    data_name = "weights.bin"
    tensors, offset = [], 0
    with open(folder / data_name, "wb") as handle:
        for k in range(weights):
            for start in range(0, rows, chunk_rows):
                r = np.arange(start, min(start + chunk_rows, rows))[:, None]
                c = np.arange(cols)[None, :]
                handle.write((((r * 7 + c * 3 + k) % 17 - 8) / 256).astype(np.float32).tobytes())
            length = rows * cols * 4
            t = onnx.TensorProto()
            t.name, t.data_type = f"w{k}", onnx.TensorProto.FLOAT
            t.dims.extend([rows, cols])
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            tensors.append(t)
            offset += length
    nodes = [helper.make_node("Identity", ["x"], ["x_id"])]
    terms = []
    for k in range(weights):
        nodes.append(helper.make_node("MatMul", ["x_id", f"w{k}"], [f"m{k}"]))
        terms.append(f"m{k}")
    total = terms[0]
    for k, term in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [total, term], [f"s{k}"]))
        total = f"s{k}"
    nodes.append(helper.make_node("Relu", [total], ["y"]))
    graph = helper.make_graph(nodes, "big", [tensor("x", ["N", rows])], [tensor("y", ["N", cols])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "big.onnx"
    path.write_bytes(model.SerializeToString())
    return path, offset
