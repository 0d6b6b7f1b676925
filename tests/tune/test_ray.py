"""The same search on a real local Ray cluster: a head started here on 127.0.0.1, trials run by its workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.tune.tunekit import onnxopt_cli

pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own session; the whole process group is stopped afterwards."""
    port = _free_port()
    # this interpreter runs the head, so its workers import this checkout's onnxopt
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"]
    with open(tmp_path / "ray.log", "w") as log:
        head = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, (tmp_path / "ray.log").read_text()
                time.sleep(1)
        else:
            pytest.fail("the Ray head did not come up in 180 s")
        time.sleep(3)  # the raylet registers after the GCS port opens
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_trials_run_as_ray_tasks(problem, ray_head, tmp_path):
    report = tmp_path / "tune.json"
    proc = onnxopt_cli("tune", problem["model"], "--calib", problem["calib"], "--data", problem["data"], "--labels", problem["labels"],
                       "--max-drop", "2", "--targets", "ort-fp32", "--trials", "2", "--iters", "4", "--subset", "0",
                       "--ray", ray_head, "--storage", tmp_path / "study.log", "--json", report)
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(report.read_text())
    assert data["executor"] == "ray"
    assert len(data["trials"]) == 2
    ran = [t for t in data["trials"] if t["state"] == "complete"]
    assert ran and all(t["worker"].startswith("ray node ") for t in ran)
    assert all(t["speedup"] > 0 and t["drop_pts"] is not None for t in ran)
