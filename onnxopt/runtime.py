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
from onnxopt.ir import model_size_bytes, save_model

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


# Models larger than this reach ORT through a temporary file with external data instead of bytes: ORT
# then maps the weights from the file rather than copying them out of the bytes (MiniLM, 90 MB:
# +141 MB resident per float session instead of +226; its int8 compile's peak 886 -> 676 MB).
LOAD_FROM_FILE_BYTES = 32 << 20

_shared: SharedWeights | None = None  # weights sessions created meanwhile take from memory (shared_weights)


class SharedWeights:
    """A model's large initializers as OrtValues, for sessions of models that carry the same tensors.

    int8's fallback starts dozens of sessions of variants of one float model: serializing its
    weights into every model's bytes and parsing them back was most of each session's start
    (EfficientNet-Lite0 sensitivity models: 42 -> 19 ms). The copy of the weights held here costs
    memory, so the fallback shares them only while it runs. An initializer is taken from here only
    where its name and bytes both match; any other tensor travels in the model as usual.
    """

    MIN_BYTES = 4096

    def __init__(self, model: onnx.ModelProto):
        self.tensors: dict[str, tuple[bytes, ort.OrtValue]] = {}
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL or len(init.raw_data) < self.MIN_BYTES:
                continue
            raw = init.raw_data
            array = np.frombuffer(raw, dtype=onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).reshape(tuple(init.dims))
            self.tensors[init.name] = (raw, ort.OrtValue.ortvalue_from_numpy(array))

    def serialize(self, model: onnx.ModelProto, so: ort.SessionOptions) -> bytes:
        """The model's bytes with the matching initializers left out (marked external and handed to
        `so` instead); the model itself is as it was when this returns."""
        taken = []
        try:
            for init in model.graph.initializer:
                entry = self.tensors.get(init.name)
                if entry is None or init.data_location == onnx.TensorProto.EXTERNAL or init.raw_data != entry[0]:
                    continue
                init.ClearField("raw_data")
                init.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", "in-memory"), ("offset", "0"), ("length", str(len(entry[0])))):
                    item = init.external_data.add()
                    item.key, item.value = key, value
                taken.append(init)
            payload = model.SerializeToString()
        finally:
            for init in taken:
                del init.external_data[:]
                init.ClearField("data_location")
                init.raw_data = self.tensors[init.name][0]
        if taken:
            so.add_external_initializers([init.name for init in taken], [self.tensors[init.name][1] for init in taken])
        return payload


@contextmanager
def shared_weights(model: onnx.ModelProto) -> Iterator[None]:
    """Sessions created meanwhile take `model`'s large initializers from memory where theirs match."""
    global _shared
    previous, _shared = _shared, SharedWeights(model)
    try:
        yield
    finally:
        _shared = previous


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
    """An InferenceSession for an in-memory model (models over LOAD_FROM_FILE_BYTES go through a temporary file).

    `arena=False` for a session that exposes many intermediate tensors: ORT's CPU arena would keep
    the peak of all of them reserved for the rest of the process."""
    so = session_options(threads, opt_level, spinning, profile_prefix)
    so.enable_cpu_mem_arena = arena
    providers = list(providers) if providers else ["CPUExecutionProvider"]
    try:
        if model_size_bytes(model) > LOAD_FROM_FILE_BYTES:
            with tempfile.TemporaryDirectory(prefix="onnxopt-ort-") as tmp:
                path = os.path.join(tmp, "model.onnx")
                save_model(model, path, external_data=True)
                return ort.InferenceSession(path, so, providers=providers)
        payload = _shared.serialize(model, so) if _shared is not None else model.SerializeToString()
        return ort.InferenceSession(payload, so, providers=providers)
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
