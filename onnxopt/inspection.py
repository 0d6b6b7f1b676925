"""What a model is: interface, opsets, op histogram, parameters, size and estimated MACs."""

from __future__ import annotations

import ast
import math
import operator
import re
from fractions import Fraction
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxopt.costs import graph_costs, op_histogram
from onnxopt.graphs import annotate_shapes, import_graph, iter_graphs, node_count
from onnxopt.inputs import graph_inputs, input_specs
from onnxopt.ir import model_size_bytes
from onnxopt.validation import weightless_copy


def _value_info(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim] if tt.HasField("shape") else None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else None
    return {"name": vi.name, "dtype": dtype, "shape": dims}


def _with_concrete_shapes(graph, model: onnx.ModelProto, input_dims: dict[str, tuple[int, ...]]):
    """`graph` annotated with concrete shapes for these input dims: onnx's inference on a weightless
    copy (the weights do not matter to shapes), then the model's own symbolic annotations with the
    input symbols ('batch', 'sequence') replaced, where onnx's inference stops (contrib ops)."""
    symbols = {}
    for tensor in graph.inputs:
        if tensor.name in input_dims:
            symbols.update({d: v for d, v in zip(tensor.shape or (), input_dims[tensor.name]) if isinstance(d, str)})
            tensor.shape = list(input_dims[tensor.name])
    skeleton = weightless_copy(model)
    for vi in skeleton.graph.input:
        if vi.name in input_dims:
            del vi.type.tensor_type.shape.dim[:]
            for d in input_dims[vi.name]:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False, data_prop=True)
        annotate_shapes(graph, inferred)
    except Exception:  # costs are estimates; a model onnx cannot infer keeps its own annotations
        pass
    for sub in iter_graphs(graph):
        for tensor in sub.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor.shape is not None and any(isinstance(d, str) for d in tensor.shape):
                tensor.shape = [dim_value(d, symbols) if isinstance(d, str) else d for d in tensor.shape]
    return graph


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv}
_CALLS = {"floor": math.floor, "ceil": math.ceil, "max": max, "min": min, "Max": max, "Min": min}


def dim_value(dim: str, symbols: dict[str, int]) -> int | str:
    """A symbolic dim as a number: an input symbol itself, or an expression over input symbols as
    ORT's symbolic inference writes them ('floor(sequence/2 - 1/2) + 1'); the dim unchanged when
    it names anything else."""
    if dim in symbols:
        return symbols[dim]
    text = dim
    for name in sorted(symbols, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.?]){re.escape(name)}(?![\w.?])", str(int(symbols[name])), text)
    try:
        value = _evaluate(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return dim
    return int(value) if value == int(value) and value > 0 else dim


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return Fraction(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS and not node.keywords:
        return Fraction(_CALLS[node.func.id](*(_evaluate(a) for a in node.args)))
    raise ValueError("not a dim expression")


def model_summary(
    model: onnx.ModelProto, *, costs: bool = True, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, Any]:
    """A JSON-ready description. Costs need concrete shapes: dynamic input dims take the same
    values verification and profiling use (1 for batch, `input_shapes` where given)."""
    summary: dict[str, Any] = {
        "inputs": [_value_info(vi) for vi in graph_inputs(model)],
        "outputs": [_value_info(vi) for vi in model.graph.output],
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "size_bytes": model_size_bytes(model),
        "ops": op_histogram(model),
    }
    graph = import_graph(model)
    summary["nodes"] = node_count(graph)
    if costs:
        specs = input_specs(model, input_shapes)
        by_name = {spec.name: spec.shape for spec in specs}
        summary.update(graph_costs(_with_concrete_shapes(graph, model, by_name)))
        summary["cost_shapes"] = {name: list(shape) for name, shape in by_name.items()}
    return summary

