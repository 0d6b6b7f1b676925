"""The Backend protocol: build an artifact from a model, run it, time it."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
import onnx

from onnxopt.profiling import LatencyComparison, LatencyStats


class Backend(Protocol):
    name: str

    def build(self, model: onnx.ModelProto) -> Any:
        """Compile the model into a runnable artifact (a session, an engine)."""

    def runner(self, artifact: Any, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        """A zero-argument callable that runs the artifact once on the feeds."""

    def profile(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int, iters: int) -> LatencyStats:
        ...

    def compare(
        self, baseline: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int, iters: int
    ) -> LatencyComparison:
        ...
