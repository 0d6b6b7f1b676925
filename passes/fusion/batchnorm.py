"""BatchNormalization folded into the layer before it.

Inference BN is `y = (x - mean) / sqrt(var + eps) * gamma + beta`, an affine map per channel.
After Conv/ConvTranspose it becomes scaled filters and a shifted bias; after a Gemm, or a MatMul
with a 2-D input and constant 2-D weight, scaled weight columns and a bias (a Gemm). Exact in real
arithmetic. A BN whose channel axis is not the producer's output-channel axis (MatMul on 3-D
input), in training mode, or with non-constant statistics stays.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import rank_of
from onnxopt.passes.fusion.channels import conv_weight, fold_affine, out_channels
from onnxopt.passes.fusion.rules import Rule, RulePass, is_float, present
from onnxopt.pipeline import register_pass


def bn_affine(rule: Rule, bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel of an inference-mode BN with constant parameters, else None."""
    if len(bn.inputs) != 5 or bn.attrs.get("training_mode", 0) or bn.attrs.get("spatial", 1) != 1:
        return None
    if any(out.outputs or rule.is_output(out) for out in bn.outputs[1:]):
        return None
    gamma, beta, mean, var = (rule.const(t) for t in bn.inputs[1:])
    if not all(is_float(v) and v.ndim == 1 for v in (gamma, beta, mean, var)):
        return None
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return scale, beta.astype(np.float64) - mean.astype(np.float64) * scale


class FoldConvBatchNorm(Rule):
    """Conv -> BatchNormalization: scale the filters, shift the bias."""

    pattern = ("Conv", "BatchNormalization")

    def check(self, conv, bn):
        weight = conv_weight(self, conv)
        if weight is None:
            return self.refuse("weight not a constant float filter of its own")
        affine = bn_affine(self, bn)
        if affine is None:
            return self.refuse("BatchNormalization not in inference mode with constant parameters")
        if bn.inputs[0] is not conv.outputs[0] or len(affine[0]) != out_channels(conv, weight):
            return self.refuse("BatchNormalization does not normalize the conv's output channels")
        return self.accept(scale=affine[0], shift=affine[1])

    def rewrite(self, conv, bn, scale, shift):
        fold_affine(self, conv, scale, shift)
        self.absorb(conv, bn)


class FoldConvTransposeBatchNorm(FoldConvBatchNorm):
    """ConvTranspose -> BatchNormalization: the same, on the transposed filter layout."""

    pattern = ("ConvTranspose", "BatchNormalization")


class FoldGemmBatchNorm(Rule):
    """Gemm -> BatchNormalization over (N, M): scale the weight's output columns, fold into C."""

    pattern = ("Gemm", "BatchNormalization")

    def _weight(self, gemm):
        weight = self.const(gemm.inputs[1], exclusive=True)
        return weight if is_float(weight) and weight.ndim == 2 else None

    def check(self, gemm, bn):
        weight = self._weight(gemm)
        affine = bn_affine(self, bn)
        if weight is None or affine is None or bn.inputs[0] is not gemm.outputs[0] or len(gemm.outputs) != 1:
            return False
        columns = weight.shape[0] if gemm.attrs.get("transB", 0) else weight.shape[1]
        if len(affine[0]) != columns:
            return False
        if len(gemm.inputs) > 2 and present(gemm.inputs[2]):
            c = self.const(gemm.inputs[2])
            return is_float(c) and c.ndim <= 2 and (c.ndim == 0 or c.shape[-1] in (1, columns))
        return True

    def rewrite(self, gemm, bn):
        scale, shift = bn_affine(self, bn)
        weight = self._weight(gemm)
        transposed = bool(gemm.attrs.get("transB", 0))
        new_weight = weight.astype(np.float64) * (scale[:, None] if transposed else scale[None, :])
        beta = float(gemm.attrs.get("beta", 1.0))
        has_c = len(gemm.inputs) > 2 and present(gemm.inputs[2])
        c = beta * self.const(gemm.inputs[2]).astype(np.float64) if has_c else np.zeros(1)
        new_c = c * scale + shift
        gemm.attrs["beta"] = 1.0
        inputs = [gemm.inputs[0], self.new_const(gemm.inputs[1].name, new_weight.astype(weight.dtype)),
                  self.new_const(f"{gemm.name}_bias", new_c.astype(weight.dtype))]
        gemm.inputs.clear()
        gemm.inputs.extend(inputs)
        self.absorb(gemm, bn)


class FoldMatMulBatchNorm(Rule):
    """MatMul (2-D input, constant 2-D weight) -> BatchNormalization: one Gemm with scaled columns."""

    pattern = ("MatMul", "BatchNormalization")

    def check(self, matmul, bn):
        weight = self.const(matmul.inputs[1], exclusive=True)
        affine = bn_affine(self, bn)
        return (
            is_float(weight) and weight.ndim == 2 and affine is not None and bn.inputs[0] is matmul.outputs[0]
            and rank_of(matmul.inputs[0]) == 2 and len(affine[0]) == weight.shape[1]
        )

    def rewrite(self, matmul, bn):
        scale, shift = bn_affine(self, bn)
        weight = self.const(matmul.inputs[1])
        new_weight = self.new_const(matmul.inputs[1].name, (weight.astype(np.float64) * scale[None, :]).astype(weight.dtype))
        bias = self.new_const(f"{matmul.name}_bias", shift.astype(weight.dtype))
        self.replace([matmul, bn], "Gemm", [matmul.inputs[0], new_weight, bias])


BATCHNORM_RULES = (FoldConvBatchNorm, FoldConvTransposeBatchNorm, FoldGemmBatchNorm, FoldMatMulBatchNorm)


@register_pass
class FoldBatchNorm(RulePass):
    """Fold inference BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul before it."""

    name = "fold-batchnorm"
    description = "fold BatchNormalization into a preceding Conv/ConvTranspose/Gemm/MatMul"
    rules = BATCHNORM_RULES
