"""ONNX Runtime backend: sessions on the best execution provider, latency and per-op profiles.

It implements backends/base.py's protocol: always available (onnxruntime is a dependency), no
readiness check, and `lower` times the optimized model against the original in paired runs; its
report section is that comparison (and the per-op breakdown when asked).
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx

from onnxopt import profiling
from onnxopt.backends.base import Artifact, LowerRequest, batch_of
from onnxopt.runtime import best_providers, make_session


@dataclass
class OrtBackend:
    """`threads=0` lets ORT choose; `opt_level` is ORT's own graph optimization level (all by default)."""

    threads: int = 0
    opt_level: str = "all"
    providers: list[str] | None = None
    allow_gpu: bool = True
    name: str = field(default="ort", init=False)
    display_name: ClassVar[str] = "ONNX Runtime"
    artifact_kind: ClassVar[str] = "session"
    requirement: ClassVar[str] = "onnxruntime"

    @classmethod
    def for_target(cls, target: Any = None, *, threads: int = 0, input_ranges: dict | None = None) -> OrtBackend:
        return cls(threads=threads)

    @staticmethod
    def availability() -> str | None:
        return None  # onnxruntime is a dependency of onnxopt

    def readiness(self, model: onnx.ModelProto, warn: Callable[[str], None]) -> dict[str, Any] | None:
        return None  # whatever passed verification runs in ONNX Runtime

    def lower(self, model: onnx.ModelProto, target: Any, request: LowerRequest) -> Artifact:
        """Time `model` against `request.baseline` (paired, interleaved); the session is built for that."""
        results: dict[str, Any] = {}
        if request.profile and request.baseline is not None:
            request.log("profiling original vs optimized (interleaved)")
            iters = request.iters
            comparison = self.compare(request.baseline, model, request.feeds, warmup=max(iters // 10, 2), iters=iters)
            results["latency"] = comparison.to_dict()
            if request.op_breakdown:
                results["op_breakdown"] = {
                    "original": self.op_breakdown(request.baseline, request.feeds),
                    "optimized": self.op_breakdown(model, request.feeds),
                }
        return Artifact(backend=self.name, results=results)

    def report_section(self, artifact: Artifact | None, readiness: dict[str, Any] | None) -> dict[str, Any]:
        results = artifact.results if artifact is not None else {}
        return {"latency": results.get("latency"), "op_breakdown": results.get("op_breakdown")}

    def chosen_providers(self) -> list[str]:
        return list(self.providers) if self.providers else best_providers(self.allow_gpu)

    def build(self, model: onnx.ModelProto, *, spinning: bool = True, profile_prefix: str | None = None):
        return make_session(
            model,
            threads=self.threads,
            opt_level=self.opt_level,
            spinning=spinning,
            providers=self.chosen_providers(),
            profile_prefix=profile_prefix,
        )

    def runner(self, artifact, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        names = [o.name for o in artifact.get_outputs()]
        return lambda: artifact.run(names, feeds)

    def profile(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int = 5, iters: int = 50) -> profiling.LatencyStats:
        session = self.build(model)
        return profiling.measure(self.runner(session, feeds), warmup=warmup, iters=iters, batch=batch_of(feeds))

    def compare(
        self, baseline: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int = 5, iters: int = 50
    ) -> profiling.LatencyComparison:
        """Both sessions alive at once, so spinning is off: an idle spinner would steal the other's cores."""
        base = self.build(baseline, spinning=False)
        cand = self.build(candidate, spinning=False)
        return profiling.compare(
            self.runner(base, feeds), self.runner(cand, feeds), warmup=warmup, iters=iters, batch=batch_of(feeds)
        )

    def op_breakdown(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, iters: int = 10) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="onnxopt-prof-") as tmp:
            session = self.build(model, profile_prefix=os.path.join(tmp, "ort"))
            run = self.runner(session, feeds)
            run()
            for _ in range(iters):
                run()
            path = session.end_profiling()
            if not os.path.isabs(path):
                matches = glob.glob(os.path.join(tmp, "ort*.json")) or [path]
                path = matches[0]
            return profiling.ort_profile_breakdown(path, iters + 1)
