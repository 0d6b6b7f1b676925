"""ONNX Runtime sessions for the core's own needs (verification, calibration, profiling).

The backends build on this; the core needs to run models without importing a backend.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.errors import BackendError
from onnxopt.ir import needs_external_data, save_model

ort.set_default_logger_severity(3)  # graph-optimizer chatter is not the user's concern

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_default_threads = 0  # intra-op threads of sessions that ask for none (0: ORT's own choice, one per core)


@contextmanager
def default_threads(count: int) -> Iterator[None]:
    """Sessions created meanwhile without an explicit thread count use `count` threads.

    Tune compiles its trials with one thread: on a shared or busy machine, spinning intra-op
    threads of the many small sessions a compile creates cost several times the work itself.
    """
    global _default_threads
    previous, _default_threads = _default_threads, count
    try:
        yield
    finally:
        _default_threads = previous


PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def best_providers(allow_gpu: bool = True) -> list[str]:
    available = ort.get_available_providers()
    order = PREFERRED_PROVIDERS if allow_gpu else ("CPUExecutionProvider",)
    chosen = [p for p in order if p in available]
    return chosen or ["CPUExecutionProvider"]


def session_options(
    threads: int = 0, opt_level: str = "all", spinning: bool = True, profile_prefix: str | None = None
) -> ort.SessionOptions:
    if opt_level not in OPT_LEVELS:
        raise BackendError(f"unknown graph optimization level {opt_level!r}; use one of {', '.join(OPT_LEVELS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.log_severity_level = 4  # failures reach the user once, as our one-line errors, not as ORT log lines too
    if opt_level == "disable":  # plain runs (verification): weight prepacking is a transient second copy of every weight
        so.add_session_config_entry("session.disable_prepacking", "1")
    threads = threads or _default_threads
    if threads:
        so.intra_op_num_threads = threads
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def make_session(
    model: onnx.ModelProto,
    *,
    threads: int = 0,
    opt_level: str = "all",
    spinning: bool = True,
    providers: Sequence[str] | None = None,
    profile_prefix: str | None = None,
    arena: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession for an in-memory model (big models go through a temporary file).

    `arena=False` for a session that exposes many intermediate tensors: ORT's CPU arena would keep
    the peak of all of them reserved for the rest of the process."""
    so = session_options(threads, opt_level, spinning, profile_prefix)
    so.enable_cpu_mem_arena = arena
    providers = list(providers) if providers else ["CPUExecutionProvider"]
    try:
        if needs_external_data(model):
            with tempfile.TemporaryDirectory(prefix="onnxopt-ort-") as tmp:
                path = os.path.join(tmp, "model.onnx")
                save_model(model, path, external_data=True)
                return ort.InferenceSession(path, so, providers=providers)
        return ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"onnxruntime cannot load the model: {first}") from None


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, Any]:
    names = outputs or [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feeds)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"onnxruntime failed to run the model: {first}") from None
    return dict(zip(names, values))


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, opt_level: str = "disable") -> dict[str, Any]:
    """Run a model once; verification uses no graph optimizations so ORT's own fusions don't blur the comparison."""
    session = make_session(model, opt_level=opt_level)
    return run_session(session, feeds)
