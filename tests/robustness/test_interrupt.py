"""Ctrl-C during a compile: a one-line message, a non-zero exit, no output and no temp files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import onnx
import pytest

from onnxopt.ir import save_model
from tests.robustness.models import slow_model
from tests.test_ir import small_model


def _listing(folder):
    return sorted(p for p in os.listdir(folder) if p != ".ses")  # .ses: onnxruntime's own session marker


def test_sigint_mid_compile_leaves_nothing(tmp_path):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    onnx.save(slow_model(blocks=400), str(work / "slow.onnx"))
    out = work / "slow.opt.onnx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxopt.cli", "compile", str(work / "slow.onnx"), "-o", str(out), "--no-profile"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
        cwd=work,
        # a shell that starts jobs in the background (`cmd &`) ignores SIGINT in them, and Python keeps an
        # ignored SIGINT ignored: give the compile the default, as a terminal's Ctrl-C finds it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    progress = []
    while True:  # wait until the passes are running, then interrupt
        line = proc.stderr.readline()
        assert line, f"compile ended before the passes ran: {progress}"
        progress.append(line)
        if "running" in line:
            break
    time.sleep(0.2)  # inside the passes: they take seconds on this model
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    lines = rest.strip().splitlines()
    assert proc.returncode == 130, rest
    assert lines == ["onnxopt: interrupted; no output was written"], rest
    assert _listing(work) == ["slow.onnx"]
    assert _listing(tmp) == []


def test_interrupt_between_data_and_model_renames_removes_the_data(tmp_path, monkeypatch):
    """save_model moves the weights file first; an interrupt before the model's rename must not leave it behind."""
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_model(small_model(1024), tmp_path / "m.onnx", external_data=True)
    assert os.listdir(tmp_path) == []
