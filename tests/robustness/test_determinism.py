"""The same model, target, data and seed give a byte-identical output, across separate processes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx

import onnxopt
from tests.conftest import assert_same_outputs
from tests.robustness.models import rich_model


def test_rich_model_compiles_and_keeps_outputs():
    model = rich_model()
    result = onnxopt.compile(model, profile=False)
    assert_same_outputs(model, result.model)
    assert_same_outputs(model, result.model, shapes={"x": (3, 3, 8, 8)})
    ops = [n.op_type for n in result.model.graph.node]
    assert "Identity" not in ops and "Dropout" not in ops and "Neg" not in ops and "Constant" not in ops


def test_byte_identical_output_across_processes(tmp_path):
    path = tmp_path / "rich.onnx"
    onnx.save(rich_model(), str(path))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32))
    procs = []
    for run, hashseed in ((1, "1"), (2, "12345")):  # different hash seeds: no set or dict order may leak into the output
        out = tmp_path / f"out{run}.onnx"
        args = [sys.executable, "-m", "onnxopt.cli", "compile", str(path), "-o", str(out), "--calib", str(calib), "--seed", "7", "--no-profile", "-q"]
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        procs.append((out, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)))
    outputs = []
    for out, proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert sorted(os.listdir(tmp_path)) == ["calib.npz", "out1.onnx", "out2.onnx", "rich.onnx"]
    assert len(onnx.load_from_string(outputs[0]).graph.node) < len(rich_model().graph.node)
