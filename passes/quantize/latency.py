"""Measure, on this machine, whether int8 makes a group of nodes faster or slower than float (and whether its int8 kernels can saturate).

Int8 is not always faster: on CPUs without VNNI, depthwise convolutions and small adds often
run slower quantized than in float, because requantizing costs more than the arithmetic saves.
So each op category is measured, not guessed: the model with the category quantized against the
same model with that category left float, run interleaved in one process (paired ratios, the
median of them, spinning off so the two sessions do not steal each other's cores).
"""

from __future__ import annotations

import dataclasses
import functools
import platform

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt import profiling
from onnxopt.runtime import make_session


def category(node: gs.Node) -> str:
    """The op category latency is decided for: depthwise convs apart from dense ones."""
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        return "Conv-depthwise" if group > 1 and group == node.inputs[1].shape[0] else ("Conv-grouped" if group > 1 else "Conv")
    return node.op


_recent_sessions: list[tuple[onnx.ModelProto, object]] = []  # (model, session): the model held so its id cannot be reused


def _session(model: onnx.ModelProto):
    """A session for this very model object, reused while it stays among the last two measured: the
    latency steps compare one int8 model against a series of variants (one session creation fewer each)."""
    for held, session in _recent_sessions:
        if held is model:
            return session
    del _recent_sessions[1:]  # the oldest goes before the new one is built: two sessions alive at most (peak memory)
    session = make_session(model, spinning=False)
    _recent_sessions.insert(0, (model, session))
    return session


def release_sessions() -> None:
    """Drop the reused sessions (the pass calls this when it is done with its measurements)."""
    _recent_sessions.clear()


def paired_speedup(baseline: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray], iters: int = 30) -> profiling.LatencyComparison:
    """How much faster `candidate` runs than `baseline` (median of interleaved pairs)."""
    base = _session(baseline)
    cand = _session(candidate)
    b_names = [o.name for o in base.get_outputs()]
    c_names = [o.name for o in cand.get_outputs()]
    return profiling.compare(lambda: base.run(b_names, feeds), lambda: cand.run(c_names, feeds), warmup=max(iters // 6, 2), iters=iters)


def measure_speedup(ctx, baseline: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray], iters: int = 30) -> profiling.LatencyComparison:
    """`paired_speedup`, or the compile's own paired measurement when ctx offers one (ctx.options["measure_speedup"])."""
    measure = (getattr(ctx, "options", None) or {}).get("measure_speedup")
    if callable(measure):
        return measure(baseline, candidate, feeds, iters=iters)
    return paired_speedup(baseline, candidate, feeds, iters=iters)


def settled_speedup(ctx, baseline: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray], settled, iters: int = 30):
    """`measure_speedup` in two rounds: a third of the pairs first, the rest only when that round
    does not already settle the decision (`settled(comparison)`), pooled with it. A category whose
    int8 is clearly faster (most of them, by far) costs a third of the runs; a close one the same."""
    first = measure_speedup(ctx, baseline, candidate, feeds, iters=max(iters // 3, 2))
    if settled(first):
        return first
    if not getattr(first, "baseline_seconds", None):  # a measurement without raw timings cannot be pooled
        return measure_speedup(ctx, baseline, candidate, feeds, iters=iters)
    rest = measure_speedup(ctx, baseline, candidate, feeds, iters=max(iters - len(first.baseline_seconds), 2))
    base = np.asarray(first.baseline_seconds + rest.baseline_seconds)
    cand = np.asarray(first.candidate_seconds + rest.candidate_seconds)
    ratios = base / np.maximum(cand, 1e-12)
    low, high = profiling.bootstrap_median_ci(ratios)
    return dataclasses.replace(rest, baseline=profiling.LatencyStats.from_samples(base), candidate=profiling.LatencyStats.from_samples(cand),
                               speedup=float(np.median(ratios)), ci_low=low, ci_high=high, pairs=len(ratios),
                               baseline_seconds=tuple(base), candidate_seconds=tuple(cand))


@functools.cache
def needs_reduced_range() -> bool:
    """x86 without VNNI: ORT's u8 x s8 int8 kernels (vpmaddubsw) add product pairs into int16 with
    saturation, so 8-bit weights can overflow (measured on EfficientNet-Lite0: cosine 0.986 with
    the Q/DQ graph run unfused, 0.836 through the fused kernels). Pair-bounded weights (pairs.py)
    and 7-bit weights cannot."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return True
    return not any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
