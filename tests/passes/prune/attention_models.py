"""Inputs and variants of models/builders.transformer_block shared by the attention-pruning tests."""

from __future__ import annotations

import numpy as np
import onnx


def feeds(seed=0, n=1):
    return {"x": np.random.default_rng(seed).standard_normal((n, 8, 32)).astype(np.float32)}


def zero_head(model: onnx.ModelProto, head: int, head_dim: int = 8) -> onnx.ModelProto:
    """The block with head `head`'s rows of the output projection set to zero: its output no longer reaches y."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.name == "attn.output.weight":
            w = onnx.numpy_helper.to_array(init).copy()
            w[head * head_dim : (head + 1) * head_dim] = 0
            init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    return copy
