"""The CLI: a real user's commands, one-line errors with exit code 2, no output file on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest
from click.testing import CliRunner

from onnxopt.cli import main
from tests.conftest import assert_same_outputs


@pytest.fixture
def model_path(tmp_path, conv_model):
    path = tmp_path / "net.onnx"
    onnx.save(conv_model, str(path))
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_compile_writes_default_output_and_report(model_path, tmp_path):
    report = tmp_path / "report.json"
    result = run("compile", model_path, "--report", report, "--iters", 6, "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "net.ort-fp32.onnx"
    assert out.exists()
    optimized = onnx.load(str(out))
    assert "Constant" not in [n.op_type for n in optimized.graph.node]
    assert len(optimized.graph.node) < 6
    assert_same_outputs(onnx.load(str(model_path)), optimized)
    data = json.loads(report.read_text())
    assert data["target"] == "ort-fp32"
    assert data["verification"]["ok"] is True
    assert data["latency"]["speedup"] > 0 and data["latency"]["pairs"] == 6
    assert data["before"]["nodes"] == 6 and data["after"]["nodes"] == len(optimized.graph.node)
    assert [p["name"] for p in data["passes"]][:2] == ["shape-inference", "constant-folding"]


def test_compile_json_and_no_profile(model_path, tmp_path):
    result = run("compile", model_path, "-o", tmp_path / "o.onnx", "--no-profile", "--json", "--verify", "each", "-q")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["latency"] is None and data["verification"]["mode"] == "each"


def _subprocess(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxopt.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no such file"),
        (b"hello world, not a model\n", "not an ONNX model"),
        ("truncate", "not an ONNX model"),
    ],
)
def test_bad_inputs_one_line_exit_2_no_output(tmp_path, conv_model, content, expected):
    path = tmp_path / "bad.onnx"
    if content == "truncate":
        data = conv_model.SerializeToString()
        path.write_bytes(data[: len(data) // 3])
    elif content is not None:
        path.write_bytes(content)
    proc = _subprocess("compile", path, "-o", tmp_path / "out.onnx", "-q")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_escaping_external_data_exit_2(tmp_path, conv_model):
    folder = tmp_path / "m"
    folder.mkdir()
    model = onnx.load_from_string(conv_model.SerializeToString())
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    onnx.save_model(model, str(folder / "m.onnx"))
    raw = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for t in raw.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../secret.bin"
    (folder / "m.onnx").write_bytes(raw.SerializeToString())
    proc = _subprocess("compile", folder / "m.onnx", "-q")
    assert proc.returncode == 2 and "outside the model's folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(folder)) == ["m.onnx", "w.bin"]


def test_refuses_to_overwrite_input(model_path):
    result = run("compile", model_path, "-o", model_path)
    assert result.exit_code == 2 and "never overwrites its input" in result.output


def test_int8_target_without_calibration_exit_2(model_path, tmp_path):
    result = run("compile", model_path, "--target", "ort-int8", "-o", tmp_path / "q.onnx")
    assert result.exit_code == 2 and "needs calibration data" in result.output
    assert not (tmp_path / "q.onnx").exists()


def test_bad_set_option_names_valid_ones(model_path):
    result = run("compile", model_path, "--set", "constant-folding.nope=1", "--no-profile")
    assert result.exit_code == 2 and "valid options" in result.output


def test_inspect_and_passes_and_profile(model_path):
    inspected = run("inspect", model_path, "--json")
    assert inspected.exit_code == 0
    data = json.loads(inspected.output)
    assert data["ops"]["Conv"] == 1 and data["macs"] == 4 * 27 * 64
    listing = run("passes")
    assert listing.exit_code == 0 and "constant-folding (exact)" in listing.output and "max_folded_bytes" in listing.output
    prof = run("profile", model_path, "--iters", 5, "--json", "--op-breakdown", "--input-shape", "x=2x3x8x8")
    assert prof.exit_code == 0, prof.output
    pdata = json.loads(prof.output)
    assert pdata["latency"]["iterations"] == 5 and pdata["latency"]["batch"] == 2
    assert any(row["op_type"] == "Conv" for row in pdata["op_breakdown"])


def test_bad_input_shape_exit_2(model_path):
    result = run("profile", model_path, "--input-shape", "x=2x3")
    assert result.exit_code == 2 and "rank" in result.output
