"""Calibration and evaluation data: folders of .npz/.npy, one .npz of N samples, ORT readers, iterables.

Every source becomes a re-iterable `CalibrationData` that yields one feed dict at a time and checks
each sample against the model's inputs (names, dtypes, ranks, fixed dims), so a wrong file fails
with a message naming it instead of deep inside a pass. Files are read one sample at a time and
never with pickle.
"""

from __future__ import annotations

import hashlib
import os
import warnings as _warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx

from onnxopt import progress
from onnxopt.errors import CalibrationError
from onnxopt.inputs import InputSpec, input_specs, random_feeds

Feeds = dict[str, np.ndarray]


def _unreadable(path: Path, kind: str, exc: Exception) -> CalibrationError:
    if "pickle" in str(exc) or "Python objects" in str(exc):
        return CalibrationError(f"{path}: not a readable {kind}: it holds pickled Python objects, which onnxopt never loads; save plain numeric arrays")
    return CalibrationError(f"{path}: not a readable {kind} ({exc})")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise _unreadable(path, ".npy array", exc) from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise _unreadable(path, ".npz archive", exc) from None


class CalibrationData:
    """A re-iterable stream of feed dicts, validated against `specs` when given.

    `factory` returns a fresh iterator of (origin, feeds) each time; `origin` names the file or
    index a bad sample came from.
    """

    def __init__(self, factory: Callable[[], Iterator[tuple[str, Feeds]]], count: int | None, specs: list[InputSpec] | None = None, limit: int | None = None, description: str = "", fixed_dims: dict | None = None):
        self._factory = factory
        self.fixed_dims = fixed_dims or {}  # per input, the dims the model fixes (None where symbolic)
        self._count = count
        self.specs = specs
        self.limit = limit
        self.description = description

    def __len__(self) -> int:
        if self._count is None:
            raise TypeError("this calibration source has no known length")
        return min(self._count, self.limit) if self.limit else self._count

    def known_length(self) -> int | None:
        return len(self) if self._count is not None else self.limit

    def __iter__(self) -> Iterator[Feeds]:
        samples = progress.track(self._factory(), f"samples · {self.description or 'data'}", self.known_length())
        for i, (origin, feeds) in enumerate(samples):
            if self.limit is not None and i >= self.limit:
                return
            yield self._check(origin, feeds) if self.specs else feeds

    def take(self, n: int) -> "CalibrationData":
        return CalibrationData(self._factory, self._count, self.specs, n if self.limit is None else min(n, self.limit), self.description, self.fixed_dims)

    def for_model(self, model: onnx.ModelProto, input_shapes: dict | None = None) -> "CalibrationData":
        return CalibrationData(self._factory, self._count, input_specs(model, input_shapes), self.limit, self.description, _fixed_dims(model))

    def _check(self, origin: str, feeds: Any) -> Feeds:
        if not isinstance(feeds, dict):
            raise CalibrationError(f"{origin}: a calibration sample must be a dict of input name -> array, got {type(feeds).__name__}")
        expected = {spec.name for spec in self.specs}
        missing, extra = sorted(expected - set(feeds)), sorted(set(feeds) - expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if extra:
                parts.append(f"unknown name(s) {', '.join(extra)}")
            raise CalibrationError(f"{origin}: {'; '.join(parts)}; the model's inputs are {', '.join(sorted(expected))}")
        checked = {}
        for spec in self.specs:
            value = np.asarray(feeds[spec.name])
            if value.dtype != spec.dtype:
                if value.dtype.kind == spec.dtype.kind or (value.dtype.kind in "iu" and spec.dtype.kind in "iu"):
                    value = value.astype(spec.dtype)
                else:
                    raise CalibrationError(f"{origin}: input {spec.name} has dtype {value.dtype}, the model wants {spec.dtype}")
            if value.ndim != len(spec.shape):
                raise CalibrationError(f"{origin}: input {spec.name} has shape {value.shape}, the model wants rank {len(spec.shape)} like {spec.shape}")
            fixed = self.fixed_dims.get(spec.name, ())
            if any(want is not None and want != got for want, got in zip(fixed, value.shape)):
                wanted = "x".join("?" if d is None else str(d) for d in fixed)
                raise CalibrationError(f"{origin}: input {spec.name} has shape {'x'.join(map(str, value.shape))}, the model wants {wanted}")
            checked[spec.name] = np.ascontiguousarray(value)
        return checked


def _fixed_dims(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Per input, the dims the model fixes (None where a dim is symbolic)."""
    dims = {}
    for vi in model.graph.input:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim)
    return dims


def _folder_source(folder: Path) -> CalibrationData:
    npz = sorted(folder.glob("*.npz"))
    npy = sorted(folder.glob("*.npy"))
    if npz and npy:
        raise CalibrationError(f"{folder} mixes .npz and .npy files; use one kind")
    if npz:
        return CalibrationData(lambda: ((str(p), _load_npz(p)) for p in npz), len(npz), description=str(folder))
    if npy:
        return CalibrationData(lambda: ((str(p), {"__single__": np.asarray(_load_npy(p))}) for p in npy), len(npy), description=str(folder))
    raise CalibrationError(f"{folder} holds no .npz or .npy files")


def _stacked_npz(path: Path) -> CalibrationData:
    arrays = _load_npz(path)
    if not arrays:
        raise CalibrationError(f"{path} is an empty .npz archive")
    counts = {key: (a.shape[0] if a.ndim else 0) for key, a in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise CalibrationError(f"{path}: every array must hold the same number of samples along axis 0, got {counts}")
    n = next(iter(counts.values()))
    return CalibrationData(
        lambda: ((f"{path}[{i}]", {k: a[i : i + 1] for k, a in arrays.items()}) for i in range(n)), n, description=str(path)
    )


def _stacked_npy(path: Path) -> CalibrationData:
    array = _load_npy(path)
    if array.ndim == 0:
        raise CalibrationError(f"{path} holds a scalar, not samples")
    return CalibrationData(
        lambda: ((f"{path}[{i}]", {"__single__": np.asarray(array[i : i + 1])}) for i in range(array.shape[0])), array.shape[0], description=str(path)
    )


def _reader_source(reader: Any) -> CalibrationData:
    """ORT's CalibrationDataReader protocol: get_next() until None; rewind() when it has one."""
    cache: list[Feeds] = []
    state = {"exhausted": False}

    def factory():
        if hasattr(reader, "rewind"):
            reader.rewind()
            cache.clear()
            state["exhausted"] = False
        if state["exhausted"]:
            yield from ((f"sample {i}", f) for i, f in enumerate(cache))
            return
        i = 0
        while True:
            feeds = reader.get_next()
            if feeds is None:
                break
            if not hasattr(reader, "rewind"):
                cache.append(feeds)  # a one-shot reader is kept so later passes can read it again
            yield f"sample {i}", feeds
            i += 1
        state["exhausted"] = True

    return CalibrationData(factory, None, description=type(reader).__name__)


def _iterable_source(items: Iterable[Feeds]) -> CalibrationData:
    if isinstance(items, (list, tuple)):
        return CalibrationData(lambda: ((f"sample {i}", f) for i, f in enumerate(items)), len(items), description="list")
    cache: list[Feeds] = []
    iterator = iter(items)
    state = {"done": False}

    def factory():
        yield from ((f"sample {i}", f) for i, f in enumerate(cache))
        if state["done"]:
            return
        for feeds in iterator:
            cache.append(feeds)
            yield f"sample {len(cache) - 1}", feeds
        state["done"] = True

    return CalibrationData(factory, None, description="iterable")


def random_calibration(model: onnx.ModelProto, count: int = 16, seed: int = 0, input_shapes: dict | None = None) -> CalibrationData:
    """Random inputs, only on explicit request: accuracy numbers measured on them mean little."""
    _warnings.warn("calibrating on random data: int8 accuracy will suffer; give real samples with --calib", stacklevel=2)
    specs = input_specs(model, input_shapes)
    return CalibrationData(lambda: ((f"random {i}", random_feeds(specs, seed + i)) for i in range(count)), count, specs, description="random")


def open_calibration(source: Any, model: onnx.ModelProto | None = None, *, limit: int | None = None, input_shapes: dict | None = None) -> CalibrationData:
    """Any supported source as CalibrationData, checked against `model`'s inputs when given."""
    if source is None:
        raise CalibrationError("this target needs calibration data: pass --calib PATH (a folder of .npz/.npy or one .npz)")
    if isinstance(source, CalibrationData):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        if str(source) == "random":
            if model is None:
                raise CalibrationError("random calibration needs the model")
            return random_calibration(model, input_shapes=input_shapes).take(limit) if limit else random_calibration(model, input_shapes=input_shapes)
        path = Path(source)
        if not path.exists():
            raise CalibrationError(f"calibration data {path}: no such file or folder")
        if path.is_dir():
            data = _folder_source(path)
        elif path.suffix == ".npz":
            data = _stacked_npz(path)
        elif path.suffix == ".npy":
            data = _stacked_npy(path)
        else:
            raise CalibrationError(f"calibration data {path}: expected a folder, a .npz or a .npy file")
    elif hasattr(source, "get_next"):
        data = _reader_source(source)
    elif isinstance(source, Iterable) and not isinstance(source, (dict, bytes)):
        data = _iterable_source(source)
    else:
        raise CalibrationError(f"unsupported calibration source {type(source).__name__}: give a path, a reader with get_next(), or an iterable of feed dicts")
    if limit:
        data = data.take(limit)
    if model is not None:
        data = data.for_model(model, input_shapes)
        data = _name_single_inputs(data)
        if isinstance(source, (str, os.PathLike)):
            next(iter(data.take(1)), None)  # a wrong file fails now, not deep inside a pass (files re-read cheaply)
    return data


def _name_single_inputs(data: CalibrationData) -> CalibrationData:
    """.npy samples carry no input name; they fit single-input models only."""
    specs = data.specs
    inner = data._factory

    def factory():
        for origin, feeds in inner():
            if isinstance(feeds, dict) and set(feeds) == {"__single__"}:
                if len(specs) != 1:
                    raise CalibrationError(f"{origin}: .npy samples fit single-input models; this one has inputs {', '.join(s.name for s in specs)} (use .npz with input names as keys)")
                feeds = {specs[0].name: feeds["__single__"]}
            yield origin, feeds

    return CalibrationData(factory, data._count, specs, data.limit, data.description, data.fixed_dims)


def fingerprint(feeds: Feeds) -> str:
    """A digest of one sample (every input's name, dtype, shape and bytes): equal samples, equal digests."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def fingerprints(samples: Iterable[Feeds]) -> set[str]:
    """The digests of every sample, to find evaluation samples the lossy passes were fitted on."""
    return {fingerprint(feeds) for feeds in samples}
