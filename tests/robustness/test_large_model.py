"""A model over 2 GB (external data) loads, compiles and saves with external data within a memory budget.

The compile runs in a child process so its peak RSS is its own; the budget is 3.5x the weight
bytes: the original model, the optimized copy and onnxruntime's copy of the weights during the
final verification, plus one tensor in flight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests.robustness.models import write_big_model

MEMORY_BUDGET = 3.5  # x the model's weight bytes

CHILD = r"""
import json, resource, sys, time
import onnxopt
start = time.perf_counter()
result = onnxopt.compile(sys.argv[1], output=sys.argv[2], profile=False)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "verification": result.report.verification,
    "nodes": [result.report.before["nodes"], result.report.after["nodes"]],
}))
"""


@pytest.mark.slow
def test_model_over_2gb_compiles_within_memory_budget(tmp_path):
    path, weight_bytes = write_big_model(tmp_path, weights=3, rows=4096, cols=45_000)
    assert weight_bytes > 2**31
    out = tmp_path / "big.opt.onnx"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    ratio = stats["peak_rss"] / weight_bytes
    print(f"\nmodel {weight_bytes / 2**30:.2f} GiB: compile {stats['seconds']:.1f} s, peak RSS {stats['peak_rss'] / 2**30:.2f} GiB = {ratio:.2f}x")
    assert stats["verification"]["ok"] is True and stats["nodes"] == [7, 6]  # the Identity is gone
    assert ratio < MEMORY_BUDGET
    # saved with external data beside it, loadable, and equal to the original
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.opt.onnx", "big.opt.onnx.data", "weights.bin"]
    assert os.path.getsize(out) < 10_000 and os.path.getsize(str(out) + ".data") >= weight_bytes
    light = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in light.graph.initializer)
    assert sorted(n.op_type for n in light.graph.node) == ["Add", "Add", "MatMul", "MatMul", "MatMul", "Relu"]
    with open(str(out) + ".data", "rb") as saved, open(tmp_path / "weights.bin", "rb") as original:
        for t in light.graph.initializer:  # spot-check each weight's first and last bytes against the source
            info = {e.key: int(e.value) for e in t.external_data if e.key != "location"}
            k = int(t.name[1:])
            source = k * 4096 * 45_000 * 4
            for at in (0, info["length"] - 64):
                saved.seek(info["offset"] + at)
                original.seek(source + at)
                assert saved.read(64) == original.read(64), t.name


def test_external_data_save_keeps_the_model_in_memory_untouched(tmp_path):
    """Saving with external data only reads the model (the old convert-and-reload doubled its memory)."""
    from onnxopt.ir import load_model, save_model
    from tests.test_ir import small_model

    model = small_model(4096)
    before = model.SerializeToString()
    save_model(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before
    light = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    offset = int({e.key: e.value for e in light.graph.initializer[0].external_data}["offset"])
    assert offset % 4096 == 0
    again = load_model(tmp_path / "m.onnx")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(again.graph.initializer[0]), onnx.numpy_helper.to_array(model.graph.initializer[0]))
    assert again.SerializeToString() == before
