"""Concrete input shapes and seeded random feeds for verification and profiling.

Dynamic dims come from `--input-shape name=1x3x224x224`; otherwise a named dim gets one value
everywhere it appears (so `batch` and `seq` stay consistent across inputs), 1 on axis 0 and 32
elsewhere, and a warning says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.errors import ConfigError, ModelInvalidError

MAX_FEED_BYTES = 2**31


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    kind: str = "tensor"  # "sequence": a list of SEQUENCE_LENGTH tensors of dtype and shape


SEQUENCE_LENGTH = 2


def _element_type(vi: onnx.ValueInfoProto) -> tuple[onnx.TypeProto.Tensor, str]:
    """The tensor type an input holds, and whether it is a tensor or a sequence of them; an optional
    input is fed present. Maps and nested sequences are refused."""
    value = vi.type
    if value.HasField("optional_type"):
        value = value.optional_type.elem_type
    if value.HasField("tensor_type"):
        return value.tensor_type, "tensor"
    if value.HasField("sequence_type") and value.sequence_type.elem_type.HasField("tensor_type"):
        return value.sequence_type.elem_type.tensor_type, "sequence"
    raise ModelInvalidError(f"input {vi.name!r} is not a tensor, a sequence of tensors or an optional one; onnxopt cannot feed it")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"bad shape {text!r}: write dims joined by x, e.g. 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"bad shape {text!r}: every dim must be a positive integer")
    return dims


def parse_input_shapes(items: list[str] | tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """`name=1x3x224x224` items into a dict (min:opt:max profiles keep their `opt` shape)."""
    shapes = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"bad --input-shape {item!r}: write name=1x3x224x224")
        name, text = item.split("=", 1)
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ConfigError(f"bad --input-shape {item!r}: a range is min:opt:max")
            text = parts[1]
        shapes[name.strip()] = parse_shape(text.strip())
    return shapes


def parse_shape_ranges(items: list[str] | tuple[str, ...]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """`name=min:opt:max` items (TensorRT optimization profiles); a plain shape is min = opt = max."""
    ranges = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"bad --input-shape {item!r}: write name=1x3x224x224 or name=min:opt:max")
        name, text = item.split("=", 1)
        parts = [parse_shape(p.strip()) for p in text.split(":")]
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise ConfigError(f"bad --input-shape {item!r}: a range is min:opt:max")
        low, opt, high = parts
        if not len(low) == len(opt) == len(high):
            raise ConfigError(f"bad --input-shape {item!r}: min, opt and max must have the same rank")
        if any(not (a <= b <= c) for a, b, c in zip(low, opt, high)):
            raise ConfigError(f"bad --input-shape {item!r}: every dim needs min <= opt <= max")
        ranges[name.strip()] = (low, opt, high)
    return ranges


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    inits = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def input_specs(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None, warnings: list[str] | None = None
) -> list[InputSpec]:
    input_shapes = dict(input_shapes or {})
    inputs = graph_inputs(model)
    names = {vi.name for vi in inputs}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        raise ConfigError(f"--input-shape names unknown input(s) {', '.join(unknown)}; inputs are {', '.join(sorted(names))}")
    symbols: dict[str, int] = {}
    specs = []
    for vi in inputs:
        ttype, kind = _element_type(vi)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        except (KeyError, TypeError, ValueError):
            raise ModelInvalidError(f"input {vi.name!r} has element type {ttype.elem_type}, which is not a valid ONNX tensor type") from None
        if vi.name in input_shapes:
            shape = input_shapes[vi.name]
            declared = ttype.shape.dim
            if ttype.HasField("shape") and len(declared) != len(shape):
                raise ConfigError(f"--input-shape {vi.name}: model declares rank {len(declared)}, got {len(shape)}")
            for d, value in zip(declared, shape):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != value:
                    raise ConfigError(f"--input-shape {vi.name}: dim fixed at {d.dim_value} in the model, got {value}")
                if d.dim_param:
                    symbols.setdefault(d.dim_param, value)
            specs.append(InputSpec(vi.name, dtype, tuple(shape), kind))
            continue
        if not ttype.HasField("shape"):
            raise ConfigError(f"input {vi.name!r} has no declared rank; pass --input-shape {vi.name}=...")
        shape = []
        guessed = False
        for axis, d in enumerate(ttype.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
                continue
            guessed = True
            default = 1 if axis == 0 else 32
            if d.dim_param:
                shape.append(symbols.setdefault(d.dim_param, default))
            else:
                shape.append(default)
        if guessed and warnings is not None:
            text = "x".join(map(str, shape))
            message = f"input {vi.name} has dynamic dims; using {text} (set --input-shape {vi.name}=...)"
            if message not in warnings:
                warnings.append(message)
        specs.append(InputSpec(vi.name, dtype, tuple(shape), kind))
    for spec in specs:
        nbytes = int(np.prod(spec.shape, dtype=np.float64)) * spec.dtype.itemsize
        if nbytes > MAX_FEED_BYTES:
            raise ConfigError(f"input {spec.name} of shape {spec.shape} would need {nbytes / 2**30:.0f} GB; pass a smaller --input-shape")
    return specs


def random_feeds(specs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Seeded inputs: standard normal floats, integers in {0, 1} (valid as indices and masks), bools;
    a sequence input gets SEQUENCE_LENGTH such tensors."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.dtype.kind not in "fiub":
            raise ConfigError(f"input {spec.name} has dtype {spec.dtype}, which onnxopt cannot generate data for")
        if spec.kind == "sequence":
            feeds[spec.name] = [_random_tensor(rng, spec) for _ in range(SEQUENCE_LENGTH)]
        else:
            feeds[spec.name] = _random_tensor(rng, spec)
    return feeds


def _random_tensor(rng: np.random.Generator, spec: InputSpec) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    if spec.dtype.kind in "iu":
        return rng.integers(0, 2, size=spec.shape).astype(spec.dtype)
    return rng.integers(0, 2, size=spec.shape).astype(bool)
