"""Checks a model must pass before any pass sees it, each failing with a message that names the culprit.

onnx.checker catches much, but says "nodes must be topologically sorted" for a cycle, a dangling
input and an unsorted graph alike, and accepts a Conv whose weight does not fit its input (the
model then fails deep inside onnxruntime) or a tensor that could never fit in memory. These
checks name the node and tensor at fault:

- structure (before onnx.checker): valid UTF-8 text, imported domains, every tensor produced once,
  every input produced somewhere, no cycle, nodes in order;
- shapes (after it): onnx's strict shape inference on a weightless copy of the model (stale
  value_info and declared output shapes are dropped first, as onnxruntime ignores them too; where
  onnx fails but onnxruntime loads the model, onnx is wrong and the model passes), plus the channel
  checks onnx leaves out (Conv/ConvTranspose weights and biases against their input);
- size: no tensor with a static shape larger than this machine's memory.

Weights are never copied: the copy used for inference replaces large or external initializers
by typed graph inputs.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.errors import ModelInvalidError
from onnxopt.ops import CONV

SKELETON_BYTES = 1 << 10  # initializers above this become typed inputs in the weightless copy (shape constants are far smaller)
_CHUNK = 1 << 22


def physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 36


def _describe(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"{node.op_type} node #{index}"


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (and its own subgraphs) reads without defining them: its outer-scope inputs."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(n for n in node.input if n)
        for sub in _subgraphs(node):
            reads |= _outer_reads(sub)
        defined.update(node.output)
    return reads - defined


def check_structure(graph: onnx.GraphProto, outer: frozenset[str] = frozenset(), where: str = "the graph") -> None:
    """SSA names, no dangling inputs, no cycles, topological order; recurses into subgraphs."""
    defined = set(outer)
    sources = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    sources |= {s.values.name for s in graph.sparse_initializer}
    defined |= sources
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            if name in producer:
                raise ModelInvalidError(
                    f"tensor {name!r} in {where} is produced by both {_describe(graph.node[producer[name]], producer[name])} "
                    f"and {_describe(node, index)}; every tensor name must be unique"
                )
            if name in sources:
                raise ModelInvalidError(
                    f"tensor {name!r} in {where} is both a graph input or initializer and the output of {_describe(node, index)}; "
                    f"every tensor name must be unique"
                )
            producer[name] = index
    known = defined | set(producer)
    reads: list[list[str]] = []
    for index, node in enumerate(graph.node):
        names = [n for n in node.input if n]
        for sub in _subgraphs(node):
            names += sorted(_outer_reads(sub))
        for name in names:
            if name not in known:
                raise ModelInvalidError(
                    f"{_describe(node, index)} in {where} reads tensor {name!r}, which no node, graph input or initializer "
                    f"produces; the model is incomplete"
                )
        reads.append(names)
    for out in graph.output:
        if out.name not in known:
            raise ModelInvalidError(f"graph output {out.name!r} of {where} is not produced by any node, input or initializer")
    _check_order(graph, reads, producer, defined, where)
    for index, node in enumerate(graph.node):
        for sub in _subgraphs(node):
            check_structure(sub, frozenset(known), f"a subgraph of {_describe(node, index)}")


def _check_order(graph, reads, producer, defined, where) -> None:
    deps = [{producer[n] for n in names if n not in defined and n in producer} for names in reads]
    late = next(((i, j) for i, d in enumerate(deps) for j in sorted(d) if j >= i), None)
    if late is None:
        return
    remaining = set(range(len(deps)))
    progress = True
    while progress:  # Kahn's algorithm: whatever cannot be scheduled sits on or behind a cycle
        progress = False
        for i in sorted(remaining):
            if not (deps[i] & remaining):
                remaining.discard(i)
                progress = True
    if remaining:
        node = min(remaining)
        path = [node]
        while True:
            node = min(d for d in deps[node] if d in remaining)
            if node in path:
                cycle = path[path.index(node):] + [node]
                break
            path.append(node)
        chain = " -> ".join(_describe(graph.node[i], i) for i in reversed(cycle))
        raise ModelInvalidError(f"{where} has a cycle: {chain}; ONNX graphs must be acyclic")
    i, j = late
    raise ModelInvalidError(
        f"nodes of {where} are not in topological order: {_describe(graph.node[i], i)} reads the output of "
        f"{_describe(graph.node[j], j)}, which comes later; sort the nodes (e.g. onnx-graphsurgeon's toposort())"
    )


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims) * _itemsize(tensor.data_type)  # math.prod, cached sizes: every session start sizes every tensor


@functools.lru_cache(maxsize=None)
def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 1


def _is_large(init: onnx.TensorProto) -> bool:
    return init.data_location == onnx.TensorProto.EXTERNAL or tensor_nbytes(init) > SKELETON_BYTES


def weightless_copy(model: onnx.ModelProto, *, keep_annotations: bool = False) -> onnx.ModelProto:
    """The model with large/external initializers as typed inputs.

    For shape inference (the default) stale shape annotations are dropped too; `keep_annotations`
    keeps value_info, declared output shapes and metadata, for onnx.checker."""
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    graph = copy.graph
    graph.name = model.graph.name
    graph.input.extend(model.graph.input)
    for node in model.graph.node:  # Paddle and TF exports keep their weights in Constant nodes
        weight = _large_constant_value(node)
        if weight is None:
            graph.node.append(node)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], weight.data_type, list(weight.dims)))
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if _is_large(init):
            if init.name not in declared:
                graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            graph.initializer.append(init)
    if keep_annotations:
        copy.metadata_props.extend(model.metadata_props)
        graph.value_info.extend(model.graph.value_info)
        graph.output.extend(model.graph.output)
        return copy
    for out in model.graph.output:
        vi = graph.output.add()
        vi.name = out.name
        if out.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = out.type.tensor_type.elem_type
        else:
            vi.type.CopyFrom(out.type)
    return copy


def _large_constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
    return value if value is not None and _is_large(value) else None


_SUB_BYTE_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}


def left_out_tensors(model: onnx.ModelProto) -> list[tuple[str, onnx.TensorProto]]:
    """The tensors `weightless_copy` leaves out (large or external initializers, large Constant-node
    values), each with words naming it."""
    tensors = [(f"initializer {t.name!r}", t) for t in model.graph.initializer if _is_large(t)]
    for node in model.graph.node:
        value = _large_constant_value(node)
        if value is not None:
            tensors.append((f"the value of Constant node {node.name or node.output[0]!r}", value))
    return tensors


def check_weight_payloads(model: onnx.ModelProto) -> None:
    """What onnx.checker checks of a tensor, for the tensors `weightless_copy` leaves out of the copy
    the checker sees: a known element type, and stored data the size its shape needs."""
    for what, init in left_out_tensors(model):
        if init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        if init.data_type == onnx.TensorProto.UNDEFINED or not onnx.TensorProto.DataType.Name(init.data_type):
            raise ModelInvalidError(f"{what} has no element type")
        if init.data_type == onnx.TensorProto.STRING:
            continue
        count = int(np.prod(init.dims, dtype=np.int64))
        if init.HasField("raw_data"):
            bits = _SUB_BYTE_BITS.get(init.data_type)
            wanted = (count * bits + 7) // 8 if bits else tensor_nbytes(init)
            got = len(init.raw_data)
            unit = "bytes"
        else:
            field = onnx.helper.tensor_dtype_to_field(init.data_type)
            got, unit = len(getattr(init, field)), "values"
            wanted = count * (2 if init.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1)
            if init.data_type in _SUB_BYTE_BITS:  # packed into bytes, one byte per int32 entry
                wanted = (count * _SUB_BYTE_BITS[init.data_type] + 7) // 8
        if got != wanted:
            dims = "x".join(map(str, init.dims)) or "scalar"
            raise ModelInvalidError(
                f"{what} holds {got} {unit} of data but its shape {dims} needs {wanted}; the file is corrupt"
            )


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[list[int | None], int]]:
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            shapes[vi.name] = (dims, tt.elem_type)
    for init in model.graph.initializer:
        shapes[init.name] = (list(init.dims), init.data_type)
    return shapes


def _check_sizes(shapes, limit: int) -> None:
    for name, (dims, elem) in shapes.items():
        if any(d is None for d in dims):
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 1
        nbytes = float(np.prod(dims, dtype=np.float64)) * itemsize
        if nbytes > limit:
            raise ModelInvalidError(
                f"tensor {name!r} has shape {'x'.join(map(str, dims))} ({nbytes / 2**30:,.0f} GiB), more than this machine's "
                f"memory ({limit / 2**30:,.0f} GiB); the model's dims are wrong or it cannot run here"
            )


def _check_channels(model: onnx.ModelProto, shapes) -> None:
    """Conv/ConvTranspose weights and biases against the input's channels (onnx's inference skips this)."""
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in CONV or len(node.input) < 2:
            continue
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if x is None or w is None or len(x[0]) < 2 or len(w[0]) < 2 or x[0][1] is None or None in w[0]:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        channels, wdims = x[0][1], w[0]
        wanted = wdims[1] * group if node.op_type == "Conv" else wdims[0]
        if channels != wanted:
            raise ModelInvalidError(
                f"{_describe(node, index)} has weight {node.input[1]!r} of shape {'x'.join(map(str, wdims))} for an input with "
                f"{channels} channels (group {group}); the weight does not fit its input"
            )
        outputs = wdims[0] if node.op_type == "Conv" else wdims[1] * group
        bias = shapes.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None and None not in bias[0] and bias[0] != [outputs]:
            raise ModelInvalidError(
                f"{_describe(node, index)} has bias {node.input[2]!r} of shape {'x'.join(map(str, bias[0])) or 'scalar'}, "
                f"but produces {outputs} channels"
            )


def _check_domains(graph: onnx.GraphProto, imported: set[str]) -> None:
    for index, node in enumerate(graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in imported:
            raise ModelInvalidError(
                f"{_describe(node, index)} is in domain {node.domain!r}, which the model does not import; add an "
                f"opset_import entry for {node.domain!r}"
            )
        for sub in _subgraphs(node):
            _check_domains(sub, imported)


def _check_text(message, where: str = "the model") -> None:
    """Every string field must be valid UTF-8; protobuf hands back bytes for corrupt ones, which break
    every tool downstream. Tensor payloads are skipped (reading them would copy the weights)."""
    if isinstance(message, onnx.TensorProto):
        by_name = message.DESCRIPTOR.fields_by_name
        fields = [(by_name[n], getattr(message, n)) for n in ("name", "doc_string", "external_data")]
    else:
        fields = message.ListFields()
    for fd, value in fields:
        values = value if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else [value]
        for item in values:
            if fd.message_type is not None:
                _check_text(item, where)
            elif fd.type == fd.TYPE_STRING and isinstance(item, bytes):
                raise ModelInvalidError(f"a {fd.name} field in {where} is not valid UTF-8 text ({item[:40]!r}); the file is corrupt")


def validate_structure(model: onnx.ModelProto) -> None:
    """Domains and graph structure; runs before onnx.checker so these errors name the culprit."""
    _check_text(model)
    imported = {"" if o.domain == "ai.onnx" else o.domain for o in model.opset_import}
    imported |= {f.domain for f in model.functions}
    _check_domains(model.graph, imported)
    check_structure(model.graph)


def _onnxruntime_loads(model: onnx.ModelProto) -> bool | None:
    """Whether onnxruntime accepts the model's types and shapes; None when it lacks one of its ops."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return True
    except Exception as exc:
        return None if "is not a registered function/op" in str(exc) else False


def validate_shapes(model: onnx.ModelProto, memory_limit: int | None = None) -> None:
    """Strict shape inference, channel and size checks on a checker-valid model; raises ModelInvalidError."""
    skeleton = weightless_copy(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        if _onnxruntime_loads(skeleton) is False:
            text = " ".join(str(exc).split()).replace("[ShapeInferenceError] Inference error(s): ", "")
            raise ModelInvalidError(f"invalid ONNX model: shapes or types do not fit together: {text[:400]}") from None
        # onnx's strict inference also fails on some valid models (e.g. MeanVarianceNormalization, whose
        # function body it cannot infer); onnxruntime loading the model is the tie-breaker.
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
        except Exception:
            inferred = skeleton
    shapes = _static_shapes(inferred)
    shapes.update({k: v for k, v in _static_shapes(model).items() if k not in shapes})
    _check_channels(model, shapes)
    _check_sizes(shapes, memory_limit or physical_memory_bytes())


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in a graph, its nested subgraphs and node attributes included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_tensors(sub)


def nonfinite_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of float initializers and Constant values holding NaN or Inf, read in place without copies."""
    found = []
    for tensor in iter_tensors(model.graph):
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        if tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.HasField("raw_data"):
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if tensor.HasField("raw_data"):
            values = np.frombuffer(tensor.raw_data, dtype=dtype)
        else:
            values = onnx.numpy_helper.to_array(tensor).ravel()
        if any(not np.isfinite(values[i : i + _CHUNK]).all() for i in range(0, values.size, _CHUNK)):
            found.append(tensor.name or "(a Constant node's value)")
    return found
