"""Loading, validating and saving ONNX models safely.

Users feed us truncated files, text files, models over 2 GB and external-data paths that try to
escape the model's folder. Every one of those must end in a clear OnnxoptError, the input file is
never touched, and every output is written atomically (temporary file in the same folder, then
rename) so an interrupted compile never leaves half a model behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
import onnx.external_data_helper as exdata
from google.protobuf.message import DecodeError

from onnxopt.errors import ModelInvalidError, ModelLoadError, UnsafePathError
from onnxopt.validation import (
    check_weight_payloads,
    iter_tensors,
    left_out_tensors,
    tensor_nbytes,
    validate_shapes,
    validate_structure,
    weightless_copy,
)

PROTOBUF_LIMIT = 2**31 - 1
# Leave headroom under the hard protobuf limit: serialisation overhead is not in the tensor bytes.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
MIN_OPSET = 7


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def check_external_data(model: onnx.ModelProto, base_dir: Path) -> int:
    """Refuse external-data references that escape base_dir, are missing, or run past the file.

    Returns the number of external bytes referenced, so callers can budget memory.
    """
    base = base_dir.resolve()
    total = 0
    for tensor in iter_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = _external_info(tensor)
        location = info.get("location", "")
        if not location:
            raise ModelInvalidError(f"tensor {tensor.name!r} is stored externally but names no file")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
            raise UnsafePathError(
                f"tensor {tensor.name!r} points to external data at {location!r}: only paths inside "
                f"the model's folder are allowed"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise UnsafePathError(
                f"tensor {tensor.name!r} points to external data at {location!r}, outside the "
                f"model's folder {base}; move the data next to the model"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"external data file {location!r} for tensor {tensor.name!r} is missing; copy it "
                f"next to the model"
            )
        size = target.stat().st_size
        offset = int(info.get("offset", "0") or 0)
        length = int(info.get("length", "0") or 0) or max(size - offset, 0)
        if offset < 0 or offset + length > size:
            raise ModelLoadError(
                f"external data for tensor {tensor.name!r} runs past the end of {location!r} "
                f"(offset {offset} + length {length} > {size} bytes): the file is truncated"
            )
        total += length
    return total


def _check_opset(model: onnx.ModelProto) -> None:
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            if opset.version < MIN_OPSET:
                raise ModelInvalidError(
                    f"opset {opset.version} is older than {MIN_OPSET}; convert the model with "
                    f"onnx.version_converter first"
                )
            if opset.version > newest:
                raise ModelInvalidError(
                    f"opset {opset.version} is newer than this onnx package knows ({newest}); "
                    f"upgrade onnx"
                )


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{name} is not an ONNX model (protobuf parse failed: {exc}); is it truncated or another kind of file?") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{name} is not an ONNX model (no IR version or graph); is the file truncated?")
    return model


def check_model(model: onnx.ModelProto, path: Path | None = None, *, weights: bool = True) -> None:
    """Our structural checks, onnx.checker, then our shape and size checks; a failure is a ModelInvalidError.

    `weights=False` skips reading the weights' stored sizes, for models onnxopt exported itself."""
    _check_opset(model)
    validate_structure(model)
    try:
        if path is not None and model_size_bytes(model) > EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(str(path))
        else:
            # The checker serializes what it checks; without the weights that costs a fraction
            # (0.2 s less per check on MiniLM). Their payload sizes are checked on their own.
            if weights:
                check_weight_payloads(model)
            onnx.checker.check_model(weightless_copy(model, keep_annotations=True))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise ModelInvalidError(f"invalid ONNX model: {_first_line(exc)}") from None
    validate_shapes(model)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(source: str | os.PathLike | onnx.ModelProto | bytes, *, check: bool = True) -> onnx.ModelProto:
    """Load and validate a model from a path, bytes, or an in-memory ModelProto (copied)."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        if check:
            check_model(model)
        return model
    if isinstance(source, (bytes, bytearray)):
        model = _parse(bytes(source), "the given bytes")
        if check:
            check_model(model)
        return model

    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not an ONNX model file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path} is empty")
    if size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path} is {size / 2**30:.1f} GB in one protobuf, over ONNX's 2 GB limit; save the "
            f"weights as external data (onnx.save_model(..., save_as_external_data=True))"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from None
    model = _parse(data, str(path))
    del data
    check_external_data(model, path.parent)
    if check:
        _check_opset(model)
        # The path-based checker resolves external data itself; run it before we inline the data.
        has_external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(model.graph))
        if has_external:
            validate_structure(model)
            try:
                onnx.checker.check_model(str(path))
            except (onnx.checker.ValidationError, ValueError) as exc:
                raise ModelInvalidError(f"invalid ONNX model: {_first_line(exc)}") from None
            validate_shapes(model)
        else:
            check_model(model)
    try:
        exdata.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read external data ({exc})") from None
    _clear_external_markers(model)
    return model


def needs_external_data(model: onnx.ModelProto) -> bool:
    return model_size_bytes(model) > EXTERNAL_DATA_THRESHOLD


@contextlib.contextmanager
def _staging_dir(folder: Path) -> Iterator[Path]:
    staging = Path(tempfile.mkdtemp(prefix=".onnxopt-tmp-", dir=folder))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write a model atomically; models too big for one protobuf get a `<name>.data` file beside them.

    The data file is moved into place before the model file, so a reader never sees a model whose
    weights are missing, and nothing but a hidden staging folder exists while writing.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelLoadError(f"cannot write {path}: folder {folder} does not exist")
    use_external = needs_external_data(model) if external_data is None else external_data
    with _staging_dir(folder) as staging:
        staged_model = staging / path.name
        if use_external:
            data_name = path.name + ".data"
            _write_with_external_data(model, staged_model, staging / data_name, data_name)
            os.replace(staging / data_name, folder / data_name)
        else:
            with open(staged_model, "wb") as handle:
                handle.write(model.SerializeToString())
                handle.flush()
                os.fsync(handle.fileno())
        try:
            os.replace(staged_model, path)
        except BaseException:  # interrupted between the two renames: a data file without its model is litter
            if use_external:
                (folder / data_name).unlink(missing_ok=True)
            raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Temporary file in the same folder, fsync, rename: a reader never sees half a file.

    The file gets the permissions a plain open() would give (mkstemp's are owner-only).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


EXTERNAL_MIN_BYTES = 1024
_ALIGN = 4096  # page-aligned offsets let onnxruntime map the weights instead of copying them


def _copy_fields(src, dst, skip: tuple[str, ...] = ()) -> None:
    """Copy every set field of a protobuf message except `skip` (works for fields added later too)."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        target = getattr(dst, fd.name)
        if hasattr(target, "extend") and not isinstance(target, (str, bytes)):
            target.extend(value)
        elif fd.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _write_with_external_data(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Weights of the top-level initializers go to one data file, the rest to the model file.

    The in-memory model is only read: onnx's convert-then-reload round trip would replace every
    raw_data buffer, and protobuf's arena keeps the old ones until the model dies (a 2 GB model grew
    by 2 GB per save). One tensor's bytes are in flight at a time.
    """
    light = onnx.ModelProto()
    _copy_fields(model, light, skip=("graph",))
    _copy_fields(model.graph, light.graph, skip=("initializer",))
    with open(data_path, "wb") as data:
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL or tensor_nbytes(init) < EXTERNAL_MIN_BYTES:
                light.graph.initializer.append(init)
                continue
            payload = init.raw_data if init.HasField("raw_data") else onnx.numpy_helper.to_array(init).tobytes()
            offset = data.tell()
            padding = -offset % _ALIGN
            data.write(b"\0" * padding)
            data.write(payload)
            stub = light.graph.initializer.add()
            _copy_fields(init, stub, skip=("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data", "data_location", "external_data"))
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset + padding)), ("length", str(len(payload)))):
                entry = stub.external_data.add()
                entry.key, entry.value = key, value
            del payload
        data.flush()
        os.fsync(data.fileno())
    with open(model_path, "wb") as handle:
        handle.write(light.SerializeToString())
        handle.flush()
        os.fsync(handle.fileno())


def _clear_external_markers(model: onnx.ModelProto) -> None:
    for tensor in iter_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.HasField("raw_data"):
            tensor.ClearField("data_location")
            del tensor.external_data[:]
        elif tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")  # onnx's loader sets the default explicitly; keep saves byte-stable


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Serialized size including tensors (what lands on disk, weights included), to within a few bytes
    per large initializer (some tens per Constant node holding a large weight). ModelProto.ByteSize() serializes the whole model to count it: a transient
    copy of every weight and seconds per call on a 2 GB model."""
    large = [t for _, t in left_out_tensors(model) if t.data_location != onnx.TensorProto.EXTERNAL]
    return weightless_copy(model).ByteSize() + sum(tensor_nbytes(t) + len(t.name) + 16 for t in large)
