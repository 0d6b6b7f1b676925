"""MatMul + Add of a constant bias into one Gemm, where the ranks allow.

Gemm computes `A @ B + C` for 2-D A and B, with C broadcast one way to (N, M). A MatMul with a
2-D input and a 2-D weight followed by an Add of a constant that broadcasts to (N, M) without
growing it is exactly that. Refused when A's rank is unknown or not 2 (Gemm has no batch dims),
when the bias is not constant, or when the bias would broadcast the result to a larger shape.
"""

from __future__ import annotations

from onnxopt.graphs import rank_of
from onnxopt.passes.fusion.rules import Rule, RulePass, is_float, other_input
from onnxopt.pipeline import register_pass


class MatMulAddToGemm(Rule):
    """MatMul(A[N,K], B[K,M]) -> Add(C): Gemm(A, B, C)."""

    pattern = ("MatMul", "Add")

    def _bias(self, matmul, add):
        bias = other_input(add, matmul.outputs[0])
        values = self.const(bias)
        if not is_float(values) or values.ndim > 2 or rank_of(matmul.inputs[0]) != 2 or rank_of(matmul.inputs[1]) != 2:
            return None
        out_shape = matmul.outputs[0].shape or [None, matmul.inputs[1].shape[1]]
        padded = (1,) * (2 - values.ndim) + tuple(values.shape)
        for dim, want in zip(padded, out_shape):
            if dim != 1 and dim != want:
                return None  # would broadcast the result to a bigger shape, or unknown extent
        return bias

    def check(self, matmul, add):
        return self._bias(matmul, add) is not None

    def rewrite(self, matmul, add):
        bias = self._bias(matmul, add)
        self.replace([matmul, add], "Gemm", [matmul.inputs[0], matmul.inputs[1], bias])


GEMM_RULES = (MatMulAddToGemm,)


@register_pass
class MatMulToGemm(RulePass):
    """MatMul + constant Add on 2-D operands becomes one Gemm."""

    name = "matmul-add-to-gemm"
    description = "MatMul followed by a constant bias Add, on 2-D operands, into Gemm"
    rules = GEMM_RULES
