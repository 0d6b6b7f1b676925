"""What a model is: interface, opsets, op histogram, parameters, size and estimated MACs."""

from __future__ import annotations

from typing import Any

import onnx

from onnxopt.costs import graph_costs, op_histogram
from onnxopt.graphs import import_graph, node_count
from onnxopt.inputs import graph_inputs, input_specs
from onnxopt.ir import model_size_bytes


def _value_info(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim] if tt.HasField("shape") else None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else None
    return {"name": vi.name, "dtype": dtype, "shape": dims}


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
        from onnxopt.pipeline import PassContext, get_pass  # shape inference is a pass, found through the registry

        specs = input_specs(model, input_shapes)
        by_name = {spec.name: spec.shape for spec in specs}
        for tensor in graph.inputs:
            if tensor.name in by_name:
                tensor.shape = list(by_name[tensor.name])
        get_pass("shape-inference")(symbolic=False).run(graph, PassContext())  # dims are concrete here: onnx inference suffices
        summary.update(graph_costs(graph))
        summary["cost_shapes"] = {name: list(shape) for name, shape in by_name.items()}
    return summary

