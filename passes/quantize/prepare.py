"""The float model the quantizer wants: BatchNormalization folded into Conv, zero Pad merged into Conv.

Quantization must see the layer as it will run: a BatchNormalization left after a Conv would
get its own Q/DQ and a float kernel, and an explicit Pad would split the int8 Conv. The fusion
passes do this in the full recipes; when they have not run (a custom recipe, or a model that
reaches the quantizer first) these two exact rewrites do the minimum. On a fused graph they find
nothing to do.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import bypass, const_value, is_const


def _single_consumer(tensor: gs.Tensor, graph: gs.Graph) -> bool:
    return len(tensor.outputs) == 1 and not any(out is tensor for out in graph.outputs)


def fold_batchnorm(graph: gs.Graph) -> int:
    """Conv -> BatchNormalization (inference): scale the filters, shift the bias."""
    folded = 0
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or len(bn.outputs) != 1 or not bn.inputs:
            continue
        conv = bn.inputs[0].inputs[0] if len(bn.inputs[0].inputs) == 1 else None
        if conv is None or conv.op != "Conv" or not _single_consumer(conv.outputs[0], graph):
            continue
        params = bn.inputs[1:5]
        if len(params) != 4 or not all(is_const(p) for p in params) or not is_const(conv.inputs[1]):
            continue
        if len(conv.inputs) > 2 and not is_const(conv.inputs[2]):
            continue
        gamma, beta, mean, var = (const_value(p).astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        weight = const_value(conv.inputs[1]).astype(np.float64)
        bias = const_value(conv.inputs[2]).astype(np.float64) if len(conv.inputs) > 2 else np.zeros(weight.shape[0])
        new_w = (weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_b = ((bias - mean) * scale + beta).astype(np.float32)
        conv.inputs[1] = gs.Constant(conv.inputs[1].name + "_bnfold", new_w)
        b_const = gs.Constant(conv.name + "_bias_bnfold" if conv.name else bn.name + "_bias", new_b)
        if len(conv.inputs) > 2:
            conv.inputs[2] = b_const
        else:
            conv.inputs.append(b_const)
        if bypass(graph, bn):
            folded += 1
    if folded:
        graph.cleanup().toposort()
    return folded


def merge_pad(graph: gs.Graph) -> int:
    """Pad(constant 0, spatial dims only) -> Conv becomes the Conv's own pads."""
    merged = 0
    for pad in list(graph.nodes):
        if pad.op != "Pad" or pad.attrs.get("mode", "constant") not in ("constant", b"constant"):
            continue
        out = pad.outputs[0]
        if not out.outputs or not all(c.op == "Conv" and c.inputs[0] is out for c in out.outputs):
            continue
        if any(out is o for o in graph.outputs) or len(pad.inputs) < 2 or not is_const(pad.inputs[1]):
            continue
        if len(pad.inputs) > 2 and pad.inputs[2].name and (not is_const(pad.inputs[2]) or np.any(const_value(pad.inputs[2]))):
            continue
        if len(pad.inputs) > 3 and pad.inputs[3].name:
            continue  # an axes input: rare, leave it
        pads = const_value(pad.inputs[1]).astype(np.int64).ravel()
        rank = len(pads) // 2
        begin, end = pads[:rank], pads[rank:]
        if rank < 3 or np.any(begin[:2]) or np.any(end[:2]) or np.any(pads < 0):
            continue
        convs = list(out.outputs)
        if any(c.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") for c in convs):
            continue
        for conv in convs:
            own = list(conv.attrs.get("pads", [0] * (2 * (rank - 2))))
            k = rank - 2
            conv.attrs["pads"] = [int(own[i] + begin[2 + i]) for i in range(k)] + [int(own[k + i] + end[2 + i]) for i in range(k)]
            conv.inputs[0] = pad.inputs[0]
        merged += 1
    if merged:
        graph.cleanup().toposort()
    return merged
