"""Physical removal: slice every tensor and parameter of a pruned group, then fix attributes.

A kept channel's computation is untouched (its filter, BN entries and consumers' columns are
copied, never rescaled), so before reconstruction every surviving channel of a pruned group
holds exactly the values it held in the original model, and the channels that went away simply
no longer exist: the model is smaller and faster, not zero-padded.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import FreshNames, constant_input_value
from onnxopt.passes.prune.groups import Analysis, Dim


def remove_channels(graph: gs.Graph, analysis: Analysis, masks: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Apply kept-class masks; returns the kept indices of every dim that shrank."""
    kept: dict[str, np.ndarray] = {}
    for group in analysis.groups:
        if group.gid in masks:
            for dim in group.dims:
                kept[dim.key] = np.flatnonzero(masks[group.gid][group.classes[dim.key]])
    fresh = FreshNames(graph)

    for key, index in kept.items():
        dim = analysis.dims[key]
        if dim.tensor is not None:
            shape = list(dim.tensor.shape)
            shape[dim.axis] = len(index)
            dim.tensor.shape = shape
        else:
            source = dim.node.inputs[dim.index]
            values = np.take(constant_input_value(source), index, axis=dim.axis)
            dim.node.inputs[dim.index] = gs.Constant(fresh(f"{source.name}_pruned"), np.ascontiguousarray(values))

    def new_len(dim: Dim) -> int:
        return len(kept[dim.key]) if dim.key in kept else dim.length

    touched = {key for key in kept}
    for fixup in analysis.fixups:
        if any(d.key in touched for d in fixup.dims):
            fixup.apply(new_len)
    graph.cleanup().toposort()
    return kept
