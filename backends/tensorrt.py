"""TensorRT backend: lower the optimized ONNX to a serialized TensorRT 10 engine, run it, profile it.

`tensorrt` (the optional extra `onnxopt[trt]`, TensorRT 10) is imported only inside functions, so
onnxopt imports and tests without it. TensorRT 11 is refused with a clear message: it builds
strongly typed networks only, so its fp16 would need a float16 ONNX. The build follows TensorRT 10's explicit-batch, explicit-quantization
model: a network from the ONNX parser; a builder config per precision (fp32 with TF32 off unless
asked, fp16, int8 through the model's own Q/DQ with fp16 for the layers Q/DQ leave in float);
one optimization profile covering every dynamic input (`--input-shape name=min:opt:max`); a
workspace limit; a timing cache read before and written after every build (it makes rebuilds
take seconds instead of minutes); DETAILED profiling verbosity so the engine inspector can say
which ONNX nodes each layer fused and which precision it runs in.

CUDA memory, streams and events come from NVIDIA's `cuda-python` (`cuda.bindings.runtime`, or the
older `cuda.cudart`), the binding TensorRT's own Python samples use; where it is missing, from
PyTorch's CUDA API if torch is installed. Neither is a dependency: `availability()` says which is
missing. Latency is timed with CUDA events around each `execute_async_v3` after a warm-up;
per-layer times come from an IProfiler on a separate execution context, so profiling overhead
never lands in the latency numbers.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from onnxopt import profiling
from onnxopt.backends.base import Artifact, LowerRequest, Range, batch_of
from onnxopt.errors import BackendError, ConfigError
from onnxopt.ir import needs_external_data, save_model, write_bytes_atomic

PRECISIONS = ("fp32", "fp16", "int8")


# --- options -----------------------------------------------------------------------------------


@dataclass
class EngineOptions:
    """Builder settings; a recipe's [engine] table and `--set engine.key=value` fill them."""

    precision: str = "fp32"
    workspace_mb: int = 4096
    timing_cache: str = "auto"  # "auto": ~/.cache/onnxopt/tensorrt/timing-<version>.cache; "off"; or a path
    builder_optimization_level: int | None = None  # TensorRT's 0..5, default 3
    fp16_fallback: bool = True  # int8: let layers outside Q/DQ run in fp16 instead of fp32
    tf32: bool = False  # fp32: allow TF32 math (faster on Ampere+, about 10 bits of mantissa)
    strongly_typed: bool = False  # take precisions from the ONNX types (e.g. a float16 model), set no precision flags

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> EngineOptions:
        table = dict(recipe.get("engine", {}) or {})
        known = {f.name for f in fields(cls)} - {"precision"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"[engine] has unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
        precision = recipe.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ConfigError(f"TensorRT precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        options = cls(precision=precision, **table)
        if isinstance(options.workspace_mb, bool) or not isinstance(options.workspace_mb, int) or options.workspace_mb <= 0:
            raise ConfigError(f"engine.workspace_mb must be a positive integer (MiB), got {options.workspace_mb!r}")
        level = options.builder_optimization_level
        if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5):
            raise ConfigError(f"engine.builder_optimization_level must be an integer from 0 to 5, got {level!r}")
        for name in ("fp16_fallback", "tf32", "strongly_typed"):
            if not isinstance(getattr(options, name), bool):
                raise ConfigError(f"engine.{name} must be true or false, got {getattr(options, name)!r}")
        if not isinstance(options.timing_cache, str):
            raise ConfigError(f"engine.timing_cache must be auto, off or a path, got {options.timing_cache!r}")
        return options


def default_engine_path(onnx_path: Path, source_stem: str, target: str) -> Path:
    """`<stem>.<target>.engine` in the folder the ONNX is written to."""
    return onnx_path.parent / f"{source_stem}.{target}.engine"


def timing_cache_path(setting: str, version: str) -> Path | None:
    if setting in ("off", "", "none"):
        return None
    if setting != "auto":
        return Path(setting).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onnxopt" / "tensorrt"
    return base / f"timing-{version}.cache"


# --- availability and the CUDA binding -----------------------------------------------------------


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("the tensorrt Python package is not installed (pip install 'onnxopt[trt]')") from None
    except OSError as exc:  # the wheel is there but libnvinfer or CUDA libraries do not load
        raise BackendError(f"tensorrt is installed but does not load ({exc})") from None
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major != 10:
        # TensorRT 11 builds strongly typed networks only (no FP16/INT8 builder flags): fp16 there
        # needs a float16 ONNX, which this backend does not produce yet.
        raise BackendError(f"TensorRT {trt.__version__} is installed; onnxopt builds engines with TensorRT 10 (pip install 'tensorrt>=10,<11')")
    return trt


class _CudaPython:
    """CUDA runtime calls through cuda-python; every call returns (error, *values)."""

    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt  # cuda-python < 12.6
        self.rt = rt

    def _call(self, result):
        result = result if isinstance(result, tuple) else (result,)
        err, values = result[0], result[1:]
        if int(err) != 0:
            name = self.rt.cudaGetErrorName(err)[1]
            raise BackendError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else values

    def device_count(self) -> int:
        try:
            return int(self._call(self.rt.cudaGetDeviceCount()))
        except BackendError:
            return 0

    def device_name(self) -> str:
        props = self._call(self.rt.cudaGetDeviceProperties(0))
        name = props.name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr))

    def upload(self, ptr: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpy(ptr, array, array.nbytes, kind))

    def download(self, array: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpy(array, ptr, array.nbytes, kind))

    def stream(self):
        return self._call(self.rt.cudaStreamCreate())

    def handle(self, stream) -> int:
        try:
            return int(stream)
        except TypeError:
            return int(stream.getPtr())

    def sync(self, stream) -> None:
        self._call(self.rt.cudaStreamSynchronize(stream))

    def destroy_stream(self, stream) -> None:
        self._call(self.rt.cudaStreamDestroy(stream))

    def event(self):
        return self._call(self.rt.cudaEventCreate())

    def record(self, event, stream) -> None:
        self._call(self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start, end) -> float:
        self._call(self.rt.cudaEventSynchronize(end))
        return float(self._call(self.rt.cudaEventElapsedTime(start, end)))

    def destroy_event(self, event) -> None:
        self._call(self.rt.cudaEventDestroy(event))


class _TorchCuda:
    """The same calls through PyTorch's CUDA API (buffers are uint8 tensors kept alive here)."""

    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self._buffers: dict[int, Any] = {}

    def device_count(self) -> int:
        return self.torch.cuda.device_count() if self.torch.cuda.is_available() else 0

    def device_name(self) -> str:
        return self.torch.cuda.get_device_name(0)

    def malloc(self, nbytes: int) -> int:
        buffer = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        self._buffers[buffer.data_ptr()] = buffer
        return buffer.data_ptr()

    def free(self, ptr: int) -> None:
        self._buffers.pop(ptr, None)

    def upload(self, ptr: int, array: np.ndarray) -> None:
        host = self.torch.from_numpy(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        self._buffers[ptr][: array.nbytes].copy_(host)
        self.torch.cuda.synchronize()

    def download(self, array: np.ndarray, ptr: int) -> None:
        data = self._buffers[ptr][: array.nbytes].cpu().numpy()
        array.reshape(-1).view(np.uint8)[:] = data

    def stream(self):
        return self.torch.cuda.Stream()

    def handle(self, stream) -> int:
        return int(stream.cuda_stream)

    def sync(self, stream) -> None:
        stream.synchronize()

    def destroy_stream(self, stream) -> None:
        pass

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event, stream) -> None:
        event.record(stream)

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))

    def destroy_event(self, event) -> None:
        pass


def _cuda_api():
    errors = []
    for cls in (_CudaPython, _TorchCuda):
        try:
            return cls()
        except ImportError as exc:
            errors.append(f"{cls.name}: {exc}")
    raise BackendError("no Python binding to the CUDA runtime is installed (pip install cuda-python, or install torch with CUDA)")


def availability() -> str | None:
    """None when engines can be built and run here; otherwise what is missing, in one sentence."""
    try:
        _import_tensorrt()
        cuda = _cuda_api()
    except BackendError as exc:
        return str(exc)
    if cuda.device_count() == 0:
        return "no CUDA device is visible (check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"
    return None


# --- build -----------------------------------------------------------------------------------------


def _make_logger(trt):
    class _Logger(trt.ILogger):
        """Keeps TensorRT's errors and warnings for messages and the report, prints nothing."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
            elif severity == trt.ILogger.Severity.WARNING:
                self.warnings.append(str(msg))

    return _Logger()


def _parse_onnx(trt, parser, model: onnx.ModelProto) -> None:
    if needs_external_data(model):
        with tempfile.TemporaryDirectory(prefix="onnxopt-trt-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            save_model(model, path, external_data=True)
            ok = parser.parse_from_file(path)
    else:
        ok = parser.parse(model.SerializeToString())
    if ok:
        return
    problems = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        node = ""
        for attr in ("node_name", "node_operator"):
            value = getattr(error, attr, None)
            if callable(value) and value():
                node += f" {value()}"
        problems.append(f"{error.desc()}{' (node' + node + ')' if node else ''}")
    first = problems[0] if problems else "unknown parser error"
    raise BackendError(f"TensorRT's ONNX parser rejected the model: {first}; run `onnxopt check-trt` for what to change")


def _configure(trt, builder, config, options: EngineOptions) -> list[str]:
    flags = []
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = int(options.builder_optimization_level)
    if options.strongly_typed:
        return ["strongly-typed"]
    if options.precision == "fp32" and not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.precision == "fp16" or (options.precision == "int8" and options.fp16_fallback):
        config.set_flag(trt.BuilderFlag.FP16)
        flags.append("FP16")
    if options.precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ decide what runs in int8
        flags.append("INT8")
    return flags


def _add_profile(builder, network, config, profiles: dict[str, Range]) -> dict[str, list[list[int]]]:
    """One optimization profile for every input with a dynamic dim (and any input given a range)."""
    chosen = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if getattr(tensor, "is_shape_tensor", False):
            raise BackendError(f"input {tensor.name} is a shape tensor; onnxopt does not build profiles for shape-tensor inputs yet")
        if tensor.name in profiles:
            chosen[tensor.name] = profiles[tensor.name]
        elif any(d < 0 for d in dims):
            raise BackendError(
                f"input {tensor.name} has dynamic dims {dims} and no optimization profile; pass --input-shape {tensor.name}=MIN:OPT:MAX"
            )
    if not chosen:
        return {}
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in chosen.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    return {name: [list(s) for s in shapes] for name, shapes in chosen.items()}


def _load_timing_cache(config, path: Path | None, warnings: list[str]) -> dict[str, Any]:
    blob = b""
    if path is not None and path.is_file():
        blob = path.read_bytes()
    cache = config.create_timing_cache(blob)
    loaded = bool(config.set_timing_cache(cache, False))
    if blob and not loaded:  # another TensorRT version or GPU wrote it: start afresh
        warnings.append(f"timing cache {path} does not match this TensorRT/GPU; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return {"path": str(path) if path else None, "loaded_bytes": len(blob) if loaded else 0}


def _save_timing_cache(config, path: Path | None, info: dict[str, Any]) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    data = bytes(memoryview(cache.serialize()))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)
    info["saved_bytes"] = len(data)


@dataclass
class BuildResult:
    engine: bytes
    seconds: float
    flags: list[str]
    profiles: dict[str, list[list[int]]]
    timing_cache: dict[str, Any]
    tensorrt_version: str
    warnings: list[str] = field(default_factory=list)


def build_engine(model: onnx.ModelProto, options: EngineOptions, profiles: dict[str, Range] | None = None) -> BuildResult:
    """Parse, configure and build a serialized engine; failures become one-line BackendErrors."""
    trt = _import_tensorrt()
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network_flags = 0
    if options.strongly_typed:
        network_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    _parse_onnx(trt, parser, model)
    config = builder.create_builder_config()
    flags = _configure(trt, builder, config, options)
    chosen = _add_profile(builder, network, config, dict(profiles or {}))
    warnings: list[str] = []
    cache_path = timing_cache_path(options.timing_cache, trt.__version__)
    cache_info = _load_timing_cache(config, cache_path, warnings)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        why = logger.errors[-1] if logger.errors else "no reason given"
        raise BackendError(f"TensorRT could not build the engine: {why}")
    _save_timing_cache(config, cache_path, cache_info)
    return BuildResult(
        engine=bytes(memoryview(serialized)),
        seconds=seconds,
        flags=flags,
        profiles=chosen,
        timing_cache=cache_info,
        tensorrt_version=trt.__version__,
        warnings=warnings + logger.warnings[-5:],
    )


# --- engine information --------------------------------------------------------------------------

_PRECISION_WORDS = re.compile(r"\b(FP32|FP16|BF16|FP8|FP4|INT8|Int8|INT4|Int4|INT32|Int32|INT64|Int64|Bool|BOOL|UInt8|UINT8)\b")
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def _precision_of(io: list[dict[str, Any]] | None) -> str | None:
    for entry in io or []:
        match = _PRECISION_WORDS.search(str(entry.get("Format/Datatype", "")))
        if match:
            return match.group(1).lower()
    return None


def parse_layer_information(text: str) -> list[dict[str, Any]]:
    """EngineInspector's JSON as rows: name, type, precision (the type its first input is read in,
    which is what an int8 convolution computes in; the output's as a fallback), tactic, and the ONNX
    nodes the layer implements (from its metadata, else its "a + b" name) with their count."""
    data = json.loads(text)
    rows = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # built without DETAILED verbosity: names only
            rows.append({"name": layer, "type": None, "precision": None, "tactic": None, "onnx_nodes": [], "fused": layer.count(" + ") + 1})
            continue
        name = str(layer.get("Name", "?"))
        onnx_nodes = _ONNX_LAYER.findall(str(layer.get("Metadata", "")))
        if not onnx_nodes and " + " in name:
            onnx_nodes = [part.strip() for part in name.split(" + ")]
        rows.append(
            {
                "name": name,
                "type": layer.get("LayerType"),
                "precision": _precision_of(layer.get("Inputs")) or _precision_of(layer.get("Outputs")),
                "output_precision": _precision_of(layer.get("Outputs")),
                "tactic": layer.get("TacticName") or layer.get("TacticValue"),
                "onnx_nodes": onnx_nodes,
                "fused": max(len(onnx_nodes), 1),
            }
        )
    return rows


def merge_layer_times(layers: list[dict[str, Any]], total_ms: dict[str, float], runs: int) -> list[dict[str, Any]]:
    """Add ms per run and share of the total to each layer row; profiler-only names are appended."""
    runs = max(runs, 1)
    grand = sum(total_ms.values()) or 1.0
    by_name = {row["name"]: dict(row) for row in layers}
    for name, ms in total_ms.items():
        row = by_name.setdefault(name, {"name": name, "type": None, "precision": None, "tactic": None, "onnx_nodes": [], "fused": 1})
        row["ms_per_run"] = ms / runs
        row["share"] = ms / grand
    return list(by_name.values())


def layer_summary(layers: list[dict[str, Any]], onnx_nodes: int) -> dict[str, Any]:
    return {
        "engine_layers": len(layers),
        "onnx_nodes": onnx_nodes,
        "fused_layers": sum(1 for row in layers if row.get("fused", 1) > 1),
        "by_precision": dict(Counter(row.get("precision") or "unknown" for row in layers)),
        "by_type": dict(Counter(row.get("type") or "unknown" for row in layers).most_common(12)),
    }


# --- run and profile -----------------------------------------------------------------------------


class EngineRunner:
    """A deserialized engine with device buffers for one set of input shapes; use as a context manager."""

    def __init__(self, engine_bytes: bytes, feeds: dict[str, np.ndarray]):
        self.trt = trt = _import_tensorrt()
        self.cuda = _cuda_api()
        self.logger = _make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BackendError(f"TensorRT could not load the engine: {self.logger.errors[-1] if self.logger.errors else 'unknown reason'}")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise BackendError(f"no data for engine input(s) {', '.join(missing)}")
        self.host: dict[str, np.ndarray] = {}
        for name in self.inputs:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.host[name] = np.ascontiguousarray(np.asarray(feeds[name]).astype(dtype, copy=False))
        self.stream = self.cuda.stream()
        self.context = self.engine.create_execution_context()
        self._shapes(self.context)
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"output {name} has a data-dependent shape {shape}; onnxopt cannot profile such engines yet")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.host[name] = np.empty(shape, dtype)
        self.device = {name: self.cuda.malloc(self.host[name].nbytes) for name in self.names}
        self._addresses(self.context)
        for name in self.inputs:
            self.cuda.upload(self.device[name], self.host[name])

    def _shapes(self, context) -> None:
        for name in self.inputs:
            if not context.set_input_shape(name, tuple(self.host[name].shape)):
                raise BackendError(f"input {name} of shape {self.host[name].shape} is outside the engine's optimization profile")
        unresolved = context.infer_shapes() if hasattr(context, "infer_shapes") else []
        if unresolved:
            raise BackendError(f"TensorRT cannot infer the shapes of {', '.join(unresolved)}")

    def _addresses(self, context) -> None:
        for name in self.names:
            context.set_tensor_address(name, self.device[name])

    def _enqueue(self, context) -> None:
        if not context.execute_async_v3(self.cuda.handle(self.stream)):
            raise BackendError(f"TensorRT failed to run the engine: {self.logger.errors[-1] if self.logger.errors else 'unknown reason'}")

    def run(self) -> dict[str, np.ndarray]:
        self._enqueue(self.context)
        self.cuda.sync(self.stream)
        results = {}
        for name in self.outputs:
            self.cuda.download(self.host[name], self.device[name])
            results[name] = self.host[name].copy()
        return results

    def time(self, *, warmup: int = 10, iters: int = 100) -> profiling.LatencyStats:
        """GPU time of each run between two CUDA events on the stream, after a warm-up."""
        for _ in range(warmup):
            self._enqueue(self.context)
        self.cuda.sync(self.stream)
        start, end = self.cuda.event(), self.cuda.event()
        samples = []
        try:
            for _ in range(max(iters, 1)):
                self.cuda.record(start, self.stream)
                self._enqueue(self.context)
                self.cuda.record(end, self.stream)
                samples.append(self.cuda.elapsed_ms(start, end) / 1e3)
        finally:
            self.cuda.destroy_event(start)
            self.cuda.destroy_event(end)
        batch = next((int(self.host[n].shape[0]) for n in self.inputs if self.host[n].ndim), 1)
        return profiling.LatencyStats.from_samples(samples, batch)

    def layer_times(self, runs: int = 10) -> dict[str, float]:
        """Total ms per layer over `runs` runs, from an IProfiler on a separate execution context."""
        trt = self.trt

        class LayerTimes(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)
                self.total: dict[str, float] = defaultdict(float)

            def report_layer_time(self, layer_name, ms):
                self.total[str(layer_name)] += float(ms)

        recorder = LayerTimes()
        context = self.engine.create_execution_context()
        self._shapes(context)
        self._addresses(context)
        context.profiler = recorder
        context.enqueue_emits_profile = False
        self._enqueue(context)  # warm-up, not reported
        self.cuda.sync(self.stream)
        recorder.total.clear()
        for _ in range(max(runs, 1)):
            self._enqueue(context)
            self.cuda.sync(self.stream)
            context.report_to_profiler()
        del context
        return dict(recorder.total)

    def layer_information(self) -> list[dict[str, Any]]:
        inspector = self.engine.create_engine_inspector()
        for attr in ("execution_context", "context"):
            try:
                setattr(inspector, attr, self.context)
                break
            except (AttributeError, TypeError):
                continue
        return parse_layer_information(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON))

    def close(self) -> None:
        for ptr in getattr(self, "device", {}).values():
            self.cuda.free(ptr)
        self.device = {}
        if getattr(self, "stream", None) is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the backend ---------------------------------------------------------------------------------


@dataclass
class TensorRTBackend:
    """The Backend protocol (backends/base.py) over TensorRT engines."""

    options: EngineOptions = field(default_factory=EngineOptions)
    profiles: dict[str, Range] = field(default_factory=dict)
    threads: int = 0  # accepted for the protocol; TensorRT has no host thread setting
    name: str = field(default="tensorrt", init=False)
    _engines: dict[int, tuple[onnx.ModelProto, bytes]] = field(default_factory=dict, init=False, repr=False)
    display_name: ClassVar[str] = "TensorRT"
    artifact_kind: ClassVar[str] = "engine"
    requirement: ClassVar[str] = "TensorRT 10 and a CUDA GPU"

    @classmethod
    def for_target(cls, target: Any, *, threads: int = 0, input_ranges: dict[str, Range] | None = None) -> TensorRTBackend:
        """Builder options from the target's precision and [engine] table; one profile per input range."""
        options = EngineOptions.from_recipe({"precision": target.precision, "engine": dict(target.engine)})
        return cls(options=options, profiles=dict(input_ranges or {}), threads=threads)

    @staticmethod
    def availability() -> str | None:
        return availability()

    def readiness(self, model: onnx.ModelProto, warn: Callable[[str], None]) -> dict[str, Any]:
        """TensorRT 10's parser and precision rules on the ONNX (backends/trt_check.py), on any machine."""
        from onnxopt.backends.trt_check import check_model as check_trt

        result = check_trt(model, self.profiles, precision=self.options.precision)
        for finding in result.errors:
            warn(f"TensorRT check: {finding.line()}")
        return result.to_dict()

    def build(self, model: onnx.ModelProto) -> bytes:
        """The serialized engine, built once per model object (the gate times the same pair in rounds)."""
        key = id(model)
        if key not in self._engines:
            self._engines[key] = (model, build_engine(model, self.options, self.profiles).engine)
        return self._engines[key][1]

    @contextmanager
    def runner(self, artifact: bytes, feeds: dict[str, np.ndarray]) -> Iterator[Callable[[], Any]]:
        """A zero-argument run of the engine; the device buffers are freed when the block ends."""
        with EngineRunner(artifact, feeds) as engine:
            yield engine.run

    def profile(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int = 10, iters: int = 100) -> profiling.LatencyStats:
        with EngineRunner(self.build(model), feeds) as engine:
            return engine.time(warmup=warmup, iters=iters)

    def compare(self, baseline, candidate, feeds, *, warmup: int = 10, iters: int = 100) -> profiling.LatencyComparison:
        """Two engines timed in alternation (wall clock around a synchronized run, as for ORT)."""
        with self.runner(self.build(baseline), feeds) as base, self.runner(self.build(candidate), feeds) as cand:
            return profiling.compare(base, cand, warmup=warmup, iters=iters, batch=batch_of(feeds))

    def lower(self, model: onnx.ModelProto, target: Any, request: LowerRequest) -> Artifact:
        """Build the engine, write it where asked, check it against ONNX Runtime, time it, profile its layers."""
        from onnxopt.runtime import run_model

        iters = request.iters if request.profile else 1
        engine, results = self.build_and_profile(
            model,
            request.feeds,
            engine_path=request.path,
            reference=run_model(model, request.feeds),
            warmup=max(iters // 10, 2) if request.profile else 1,
            iters=iters,
            layer_runs=10 if request.profile else 1,
            log=request.log,
        )
        return Artifact(backend=self.name, handle=engine, path=request.path, results=results)

    def report_section(self, artifact: Artifact | None, readiness: dict[str, Any] | None) -> dict[str, Any]:
        return {"trt_check": readiness, "engine": artifact.results if artifact is not None else None}

    def build_and_profile(
        self,
        model: onnx.ModelProto,
        feeds: dict[str, np.ndarray],
        *,
        engine_path: Path | None,
        reference: dict[str, np.ndarray] | None = None,
        warmup: int = 10,
        iters: int = 100,
        layer_runs: int = 10,
        log: Callable[[str], None] = lambda message: None,
    ) -> tuple[bytes, dict[str, Any]]:
        """Build, save atomically, run once against the ORT reference, time, profile per layer."""
        from onnxopt.evaluation import output_difference

        log(f"building the TensorRT {self.options.precision} engine")
        built = build_engine(model, self.options, self.profiles)
        if engine_path is not None:
            write_bytes_atomic(engine_path, built.engine)
        report: dict[str, Any] = {
            "path": str(engine_path) if engine_path else None,
            "bytes": len(built.engine),
            "build_seconds": built.seconds,
            "precision": self.options.precision,
            "builder_flags": built.flags,
            "workspace_mb": self.options.workspace_mb,
            "profiles": built.profiles,
            "timing_cache": built.timing_cache,
            "tensorrt_version": built.tensorrt_version,
            "warnings": built.warnings,
        }
        log("profiling the engine (CUDA events, then per-layer times)")
        with EngineRunner(built.engine, feeds) as engine:
            report["device"] = engine.cuda.device_name()
            report["cuda_binding"] = engine.cuda.name
            outputs = engine.run()
            if reference is not None:
                diff = output_difference(reference, outputs)
                report["fidelity"] = {
                    "vs": "onnxruntime on the optimized ONNX",
                    "min_cosine": min((d.get("cosine", 0.0) for d in diff.values()), default=1.0),
                    "max_rel_error": max((d.get("max_rel", float("inf")) for d in diff.values()), default=0.0),
                    "outputs": diff,
                }
            report["latency"] = engine.time(warmup=warmup, iters=iters).to_dict()
            layers = engine.layer_information()
            times = engine.layer_times(layer_runs)
        rows = merge_layer_times(layers, times, layer_runs)
        report["layer_summary"] = layer_summary(rows, len(model.graph.node))
        report["layers"] = sorted(rows, key=lambda r: -r.get("ms_per_run", 0.0))
        return built.engine, report
