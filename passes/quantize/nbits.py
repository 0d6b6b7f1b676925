"""matmul-nbits: weight-only block-wise int4/int8 for MatMul (ONNX Runtime's MatMulNBits).

For models bound by weight memory (large transformers at small batch) the weights dominate the
bytes moved; storing them in 4 or 8 bits with one scale per block of `block_size` input values
cuts that 8x or 4x while activations stay float, so no calibration is needed. The rewrite is
MatMul(x, W[K, N]) -> com.microsoft MatMulNBits(x, packed W^T, scales). Lossy: the report gives
the weights' relative rounding error; the verify instrument measures the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graphs import const_value, is_const
from onnxopt.pipeline import Pass, PassContext, PassResult, option, register_pass


@dataclass
class MatMulNBitsConfig:
    bits: Literal[4, 8] = option(4, "bits per weight")
    block_size: int = option(32, "input values sharing one scale (a power of two, at least 16)")
    min_elements: int = option(4096, "leave smaller weights alone: the saving is not worth a kernel switch")
    accuracy_level: int = option(0, "ORT accuracy_level (0: default; 4: int8 compute of activations)")


def quantize_blocks(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W (K, N) -> (codes (N, blocks, block_size) uint8 with zero point 2^(bits-1), scales (N, blocks), dequantized W)."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float32)
    padded[:k] = weight
    wt = padded.T.reshape(n, blocks, block_size)
    qmax = 2 ** (bits - 1) - 1
    bound = np.abs(wt).max(axis=2)
    scales = np.where(bound > 0, bound / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.round(wt / scales[..., None]), -qmax - 1, qmax) + 2 ** (bits - 1)
    dequant = ((codes - 2 ** (bits - 1)) * scales[..., None]).reshape(n, -1)[:, :k].T
    return codes.astype(np.uint8), scales, dequant.astype(np.float32)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (N, blocks, block_size) into MatMulNBits' B layout: 4-bit pairs share a byte, low nibble first."""
    if bits == 8:
        return codes
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


@register_pass
class MatMulNBits(Pass):
    """MatMul with a constant 2-D weight -> com.microsoft MatMulNBits (weight-only, block-wise)."""

    name = "matmul-nbits"
    exact = False
    Config = MatMulNBitsConfig
    description = "weight-only block-wise int4/int8 MatMul weights (ORT MatMulNBits)"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        cfg = self.config
        if cfg.block_size < 16 or cfg.block_size & (cfg.block_size - 1):
            from onnxopt.errors import ConfigError

            raise ConfigError(f"matmul-nbits.block_size must be a power of two >= 16, got {cfg.block_size}")
        rewritten, errors, saved = 0, [], 0
        for node in list(graph.nodes):
            if node.op != "MatMul" or len(node.inputs) != 2 or not is_const(node.inputs[1]) or is_const(node.inputs[0]):
                continue
            weight = const_value(node.inputs[1])
            if weight.ndim != 2 or weight.dtype != np.float32 or weight.size < cfg.min_elements:
                continue
            k, n = weight.shape
            codes, scales, dequant = quantize_blocks(weight, cfg.bits, cfg.block_size)
            packed = pack(codes, cfg.bits)
            errors.append(float(np.linalg.norm(dequant - weight) / max(np.linalg.norm(weight), 1e-30)))
            saved += weight.nbytes - packed.nbytes - scales.nbytes
            node.op = "MatMulNBits"
            node.domain = "com.microsoft"
            node.attrs = {"K": int(k), "N": int(n), "bits": int(cfg.bits), "block_size": int(cfg.block_size), "accuracy_level": int(cfg.accuracy_level)}
            base = node.inputs[1].name
            node.inputs = [node.inputs[0], gs.Constant(f"{base}_nbits", packed), gs.Constant(f"{base}_nbits_scales", scales.reshape(-1))]
            rewritten += 1
        if rewritten:
            graph.cleanup().toposort()
            _import_ms_domain(graph)
            ctx.artifacts["report:matmul_nbits"] = {"bits": cfg.bits, "block_size": cfg.block_size, "matmuls": rewritten,
                                                    "max_weight_rel_error": max(errors), "bytes_saved": saved}
        return PassResult(changed=rewritten > 0, stats={"matmuls": rewritten, "bytes_saved": saved})


def _import_ms_domain(graph: gs.Graph) -> None:
    import onnx

    domains = list(getattr(graph, "import_domains", None) or [onnx.helper.make_opsetid("", graph.opset)])
    if not any(d.domain == "com.microsoft" for d in domains):
        domains.append(onnx.helper.make_opsetid("com.microsoft", 1))
    graph.import_domains = domains
