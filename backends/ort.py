"""ONNX Runtime backend: sessions on the best execution provider, latency and per-op profiles."""

from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from onnxopt import profiling
from onnxopt.runtime import best_providers, make_session


@dataclass
class OrtBackend:
    """`threads=0` lets ORT choose; `opt_level` is ORT's own graph optimization level (all by default)."""

    threads: int = 0
    opt_level: str = "all"
    providers: list[str] | None = None
    allow_gpu: bool = True
    name: str = field(default="ort", init=False)

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

    @staticmethod
    def _batch(feeds: dict[str, np.ndarray]) -> int:
        first = next(iter(feeds.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim > 0 else 1

    def profile(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int = 5, iters: int = 50) -> profiling.LatencyStats:
        session = self.build(model)
        return profiling.measure(self.runner(session, feeds), warmup=warmup, iters=iters, batch=self._batch(feeds))

    def compare(
        self, baseline: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int = 5, iters: int = 50
    ) -> profiling.LatencyComparison:
        """Both sessions alive at once, so spinning is off: an idle spinner would steal the other's cores."""
        base = self.build(baseline, spinning=False)
        cand = self.build(candidate, spinning=False)
        return profiling.compare(
            self.runner(base, feeds), self.runner(cand, feeds), warmup=warmup, iters=iters, batch=self._batch(feeds)
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
