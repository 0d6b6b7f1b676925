"""Fuzzing with broken models: random mutations of valid models and of their bytes.

A compile must either succeed or raise an OnnxoptError; any other exception is a bug. When the
loader accepts a mutated model and onnxruntime runs it, the model is valid after all, so the
compile must succeed and keep its outputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import given
from hypothesis import strategies as st

import onnxopt
from onnxopt.errors import ModelInvalidError, ModelLoadError, OnnxoptError
from onnxopt.inputs import input_specs, random_feeds
from onnxopt.ir import load_model
from onnxopt.runtime import run_model
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.generator import models

MUTATIONS = ["drop_node", "rewire_input", "swap_nodes", "reuse_output", "init_dims", "init_dtype", "attr_int", "opset", "input_dtype", "output_dims"]


def _names(model):
    names = [i.name for i in model.graph.input] + [i.name for i in model.graph.initializer]
    return names + [o for n in model.graph.node for o in n.output]


def mutate(model: onnx.ModelProto, kind: str, draw) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes, inits = m.graph.node, m.graph.initializer
    pick = lambda seq: draw(st.integers(0, len(seq) - 1))  # noqa: E731
    if kind == "drop_node" and nodes:
        del nodes[pick(nodes)]
    elif kind == "rewire_input" and nodes:
        node = nodes[pick(nodes)]
        if node.input:
            node.input[pick(node.input)] = draw(st.sampled_from(_names(m) + ["nobody"]))
    elif kind == "swap_nodes" and len(nodes) > 1:
        i, j = pick(nodes), pick(nodes)
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(nodes[i])
        b.CopyFrom(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
    elif kind == "reuse_output" and nodes:
        node = nodes[pick(nodes)]
        node.output[0] = draw(st.sampled_from(_names(m)))
    elif kind == "init_dims" and inits:
        init = inits[pick(inits)]
        dims = list(init.dims)
        if dims:
            dims[pick(dims)] = draw(st.integers(0, 7))
        else:
            dims = [draw(st.integers(0, 3))]
        del init.dims[:]
        init.dims.extend(dims)
    elif kind == "init_dtype" and inits:
        inits[pick(inits)].data_type = draw(st.sampled_from([onnx.TensorProto.INT64, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BOOL, 0, 99]))
    elif kind == "attr_int" and nodes:
        node = nodes[pick(nodes)]
        ints = [a for a in node.attribute if a.type == onnx.AttributeProto.INT]
        if ints:
            ints[pick(ints)].i = draw(st.integers(-5, 5))
    elif kind == "opset":
        m.opset_import[0].version = draw(st.integers(1, 40))
    elif kind == "input_dtype":
        m.graph.input[0].type.tensor_type.elem_type = draw(st.sampled_from([onnx.TensorProto.INT64, onnx.TensorProto.FLOAT16, onnx.TensorProto.STRING, 0]))
    elif kind == "output_dims":
        dims = m.graph.output[0].type.tensor_type.shape.dim
        if dims:
            dims[pick(dims)].dim_value = draw(st.integers(0, 9))
    return m


def runs_in_onnxruntime(model: onnx.ModelProto) -> bool:
    try:
        run_model(model, random_feeds(input_specs(model), seed=0))
        return True
    except Exception:
        return False


def compile_or_onnxopt_error(source, model_for_ort: onnx.ModelProto | None):
    try:
        return onnxopt.compile(source, profile=False, save=False)
    except OnnxoptError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), f"multi-line or empty message: {exc!r}"
        if model_for_ort is not None and not isinstance(exc, (ModelLoadError, ModelInvalidError)):
            assert not runs_in_onnxruntime(model_for_ort), f"a model onnxruntime runs was refused: {exc}"
        return None


@fuzz_settings(100)
@given(models(max_ops=6), st.sampled_from(MUTATIONS), st.data())
def test_mutated_models_compile_or_fail_cleanly(case, kind, data):
    mutated = mutate(case[0], kind, data.draw)
    compile_or_onnxopt_error(mutated, mutated)


@fuzz_settings(60)
@given(models(max_ops=4), st.data())
def test_damaged_bytes_compile_or_fail_cleanly(case, data):
    raw = bytearray(case[0].SerializeToString())
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] ^= data.draw(st.integers(1, 255))
    else:
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=32))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        path.write_bytes(bytes(raw))
        try:
            loaded = load_model(path)
        except OnnxoptError:
            loaded = None
        compile_or_onnxopt_error(str(path), loaded)
        assert sorted(p.name for p in Path(folder).iterdir()) == ["m.onnx"]


def test_random_bytes_never_escape_as_other_exceptions():
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 64, 1000):
        for _ in range(20):
            try:
                load_model(rng.bytes(size))
            except OnnxoptError:
                pass
