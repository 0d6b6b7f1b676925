"""StructuralPass: the shared skeleton of the lossy structural passes (channel-prune, depthwise-separable).

Both change the graph's structure against a MAC budget and recover accuracy by refitting the changed
layers against the teacher. The steps they share live here, so each pass keeps only its own choice
of what to change:

    costs before (the "shapes" and "costs" analyses, declared in `requires`, provided by the manager)
    -> a calibration sample -> (the pass: plan and rewrite) -> the float reference before the rewrite
    -> refit the changed layers against the teacher (or that reference) in graph order
    -> costs after (shapes re-inferred) -> the report artifact
"""

from __future__ import annotations

from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxopt.graphs import export_model
from onnxopt.passes.reconstruct import LayerTarget, refit_layers
from onnxopt.pipeline import Pass, PassContext


class StructuralPass(Pass):
    """Base of lossy structural passes; subclasses implement `run` from these steps.

    Their Config has calib_samples, reconstruct, rows_per_sample and ridge."""

    exact = False
    requires = ("shapes", "costs")

    def costs_before(self, graph: gs.Graph, ctx: PassContext) -> tuple[dict[str, Any], dict[int, int]]:
        """Parameters and MACs at concrete shapes, and MACs per node (id) to budget against."""
        return ctx.require("costs", graph)

    def costs_after(self, graph: gs.Graph, ctx: PassContext) -> dict[str, Any]:
        """The costs of the rewritten graph: the cached analyses are stale, so shapes are inferred again."""
        ctx.invalidate()
        return ctx.require("costs", graph)[0]

    def sample(self, ctx: PassContext):
        """The first `calib_samples` calibration samples, or None without calibration data."""
        return ctx.calibration.take(self.config.calib_samples) if ctx.calibration is not None else None

    def reference_before(self, graph: gs.Graph, calibration) -> onnx.ModelProto | None:
        """The graph as it is before the rewrite, the reference for tensors the teacher does not have."""
        return export_model(graph) if self.config.reconstruct and calibration is not None else None

    @staticmethod
    def reference_for(tensor: str, ctx: PassContext, reference_before: onnx.ModelProto | None) -> onnx.ModelProto | None:
        """The teacher when it computes `tensor` (so refits match the original model), else the pre-rewrite graph."""
        teacher = ctx.teacher
        if teacher is not None and any(tensor in n.output for n in teacher.graph.node):
            return teacher
        return reference_before

    def refit(self, graph: gs.Graph, targets: list[LayerTarget], calibration, ctx: PassContext) -> list[dict]:
        """Least-squares refit of the changed layers, in graph order (passes/reconstruct.py)."""
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        targets = sorted(targets, key=lambda t: order[id(t.node)])
        cfg = self.config
        return refit_layers(graph, targets, calibration, rows_per_sample=cfg.rows_per_sample, ridge=cfg.ridge, seed=ctx.seed)

    def publish(self, ctx: PassContext, report: dict[str, Any]) -> None:
        """The pass's section of the compile report."""
        ctx.artifacts[f"report:{self.name}"] = report
