"""Helpers for the tune tests."""

from __future__ import annotations

import os
import subprocess
import sys


def onnxopt_cli(*args, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """The real command in its own process (exit codes and Ctrl-C behave as for a user)."""
    env = {**os.environ, "ONNXOPT_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "onnxopt.cli", *map(str, args)], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def top1_accuracy(outputs, labels) -> float:
    """A user metric as `onnxopt.evaluate` calls it: every output stacked, and the labels (module level: it must pickle)."""
    import numpy as np

    scores = next(iter(outputs.values()))
    return float(np.mean(np.argmax(scores, axis=1) == labels))
