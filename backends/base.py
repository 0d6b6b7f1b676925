"""The Backend protocol: what compile, gate and the reports ask of a runtime, and nothing else.

A backend says whether it can run here (`availability`, with the reason when not), checks that a
model suits it (`readiness`), builds its artifact (`lower`: an ONNX Runtime session, a TensorRT
engine), times models (`profile`, and `compare`: paired, interleaved runs), and hands the report
the fields it measured (`report_section`). Callers never branch on a backend's name: they get one
from the registry (`onnxopt.backends.backend_for(target)`) and call these methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import onnx

from onnxopt.profiling import LatencyComparison, LatencyStats

Range = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass
class Artifact:
    """What `lower` built: a runnable handle (session, serialized engine), where it was written,
    and the results measured while building it (the backend's part of the report)."""

    backend: str
    handle: Any = None
    path: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)


@dataclass
class LowerRequest:
    """What `lower` may use besides the model: generated feeds, the original model for a paired
    comparison, where to write the artifact, and how long to measure."""

    feeds: dict[str, np.ndarray]
    baseline: onnx.ModelProto | None = None
    path: Path | None = None
    profile: bool = True
    iters: int = 50
    op_breakdown: bool = False
    log: Callable[[str], None] = lambda message: None


class Backend(Protocol):
    name: ClassVar[str]
    display_name: ClassVar[str]  # "TensorRT": for messages
    artifact_kind: ClassVar[str]  # "engine", "session"
    requirement: ClassVar[str]  # what a machine needs to build the artifact, for messages

    @classmethod
    def for_target(cls, target: Any, *, threads: int = 0, input_ranges: dict[str, Range] | None = None) -> Backend:
        """An instance configured from a Target (its precision, its [engine] table) and the input ranges."""

    @staticmethod
    def availability() -> str | None:
        """None when artifacts can be built and run here, else the reason in one sentence."""

    def readiness(self, model: onnx.ModelProto, warn: Callable[[str], None]) -> dict[str, Any] | None:
        """Findings on whether the runtime takes this model (None when the backend has no such check)."""

    def lower(self, model: onnx.ModelProto, target: Any, request: LowerRequest) -> Artifact:
        """Build the artifact and measure what the report shows about it."""

    def profile(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int, iters: int) -> LatencyStats:
        ...

    def compare(
        self, baseline: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray], *, warmup: int, iters: int
    ) -> LatencyComparison:
        ...

    def report_section(self, artifact: Artifact | None, readiness: dict[str, Any] | None) -> dict[str, Any]:
        """CompileReport fields this backend fills (e.g. latency, op_breakdown; trt_check, engine)."""


def batch_of(feeds: dict[str, np.ndarray]) -> int:
    """The batch size of a feed dict (the first input's leading dim), for per-sample throughput."""
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and np.ndim(first) > 0 else 1
