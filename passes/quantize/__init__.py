"""Int8 quantization: calibrators, per-target Q/DQ placement, reconstruction, mixed precision.

Modules read bottom-up: histogram and calibrators (ranges), collect and stats (streaming
statistics; stats is the one calibration pass), placement (where Q/DQ goes per target), qdq
(writing it), rounding and weights (GPTQ, bias correction), fidelity and latency (what the
fallback and never-slower decisions measure), int8 (the pass),
dynamic and nbits (MatMul-only options), trt_rules (TensorRT's Q/DQ rules as a checker).
"""
