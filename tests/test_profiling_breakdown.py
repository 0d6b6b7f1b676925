"""Per-operator breakdown from an ORT profile: per-node medians, so the cold first run is ignored."""

from __future__ import annotations

import json

import pytest

from onnxopt.profiling import ort_profile_breakdown


def _event(node, op, dur):
    return {"cat": "Node", "name": f"{node}_kernel_time", "dur": dur, "args": {"op_name": op}}


def test_medians_per_node_ignore_the_cold_run(tmp_path):
    events = [{"cat": "Session", "name": "model_run", "dur": 999}]
    for run in range(5):
        cold = run == 0
        events += [_event("conv1", "Conv", 5000 if cold else 100), _event("conv2", "Conv", 300), _event("relu", "Relu", 50 if not cold else 900)]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    rows = {r["op_type"]: r for r in ort_profile_breakdown(str(path), runs=5)}
    assert rows["Conv"]["ms_per_run"] == pytest.approx(0.4) and rows["Conv"]["nodes"] == 2
    assert rows["Relu"]["ms_per_run"] == pytest.approx(0.05) and rows["Relu"]["nodes"] == 1
    assert rows["Conv"]["share"] == pytest.approx(0.4 / 0.45)
    assert list(rows) == ["Conv", "Relu"]
