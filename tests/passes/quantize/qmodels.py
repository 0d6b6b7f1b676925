"""Tiny float models and calibration data for the quantization tests, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tests.conftest import init, make_model, tensor


def rng(seed=0):
    return np.random.default_rng(seed)


def conv_net(seed=0, with_residual=True, with_softmax=True):
    """x -> Conv(3x3)+bias -> Relu -> Conv(1x1) -> (+ skip) -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    r = rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
    ]
    last = "c2"
    if with_residual:
        nodes.append(helper.make_node("Add", ["c2", "r1"], ["s"], name="add"))
        last = "s"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits" if not with_softmax else "l"], transB=1, name="fc"),
    ]
    outputs = [tensor("logits", [1, 5])]
    if with_softmax:
        nodes.append(helper.make_node("Softmax", ["l"], ["logits"], axis=1, name="softmax"))
    inits = [
        init("w1", (r.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)),
        init("b1", (r.standard_normal(8) * 0.1).astype(np.float32)),
        init("w2", (r.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32)),
        init("b2", (r.standard_normal(8) * 0.1).astype(np.float32)),
        init("wf", (r.standard_normal((5, 8)) * 0.5).astype(np.float32)),
        init("bf", np.zeros(5, np.float32)),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], outputs, inits)


def images(n=16, seed=1, shape=(1, 3, 8, 8)):
    """Smooth, image-like inputs (a gradient plus a blob per sample), not white noise."""
    r = rng(seed)
    yy, xx = np.mgrid[0 : shape[2], 0 : shape[3]] / max(shape[2], shape[3])
    samples = []
    for _ in range(n):
        base = np.stack([np.sin(3 * xx * r.uniform(0.5, 2) + r.uniform(0, 3)) * r.uniform(0.5, 1.5) + yy * r.uniform(-1, 1) for _ in range(shape[1])])
        samples.append({"x": base[None].astype(np.float32)})
    return samples


def run(model, feeds):
    from onnxopt.runtime import run_model

    return run_model(model, feeds, opt_level="all")


def ops(model):
    return [n.op_type for n in model.graph.node]


def quant_recipe(target="ort-int8", **options):
    entry = {"name": "quantize-int8", "latency_aware": False, **options}
    backend = "tensorrt" if target.startswith("trt") else "ort"  # the placement follows the backend, not the name
    return {"name": target, "backend": backend, "passes": [{"name": "shape-inference"}, entry], "verify": {}}


def compile_int8(model, data, target="ort-int8", options=None, **pass_options):
    import onnxopt

    return onnxopt.compile(model, recipe=quant_recipe(target, **pass_options), calibration=data, profile=False, verify="off", options=options, emit="onnx")


def mean_cosine(model_a, model_b, data):
    from onnxopt.passes.quantize.fidelity import mean_cosine as mc, run_all

    return mc(run_all(model_a, data), run_all(model_b, data))


def ort_optimized_ops(model, tmp_path):
    """The op histogram of the graph ONNX Runtime runs after its own load-time fusions."""
    import collections

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "ort_optimized.onnx")).graph.node)
