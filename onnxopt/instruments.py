"""Instruments run around every pass: the checker and numeric verification.

Verification runs the model in onnxruntime (no runtime graph optimizations) on seeded random
inputs. After an exact pass the outputs must equal the previous ones within tolerance, or the
pass is named in a VerificationError. After a lossy pass the drift is recorded (not judged: lossy
passes report fidelity on real data elsewhere) and becomes the new reference.
"""

from __future__ import annotations

from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import BackendError, ConfigError, ModelInvalidError, PassError, VerificationError
from onnxopt.evaluation import output_difference, outputs_match
from onnxopt.graphs import constant_nbytes, export_model, iter_graphs
from onnxopt.inputs import input_specs, random_feeds
from onnxopt.ir import model_size_bytes
from onnxopt.ops import NONDETERMINISTIC
from onnxopt.pipeline import Instrument, Pass, PassContext, PassRecord
from onnxopt.runtime import run_model


class CheckerInstrument(Instrument):
    """onnx.checker after every pass that changed the graph; a failure names the pass."""

    def __init__(self, template: onnx.ModelProto):
        self.template = template

    def after_pass(self, p: Pass, graph: gs.Graph, ctx: PassContext, record: PassRecord) -> None:
        if not record.changed:
            return
        if _constant_bytes(graph) >= 2**31 - 1:  # onnx.checker cannot take it in memory; exporting would copy every weight for nothing
            record.checks["checker"] = "skipped (over 2 GB)"
            return
        model = export_model(graph, self.template)
        try:
            if model_size_bytes(model) < 2**31 - 1:
                onnx.checker.check_model(model)
        except (onnx.checker.ValidationError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise PassError(f"pass {p.name} left an invalid model: {first}") from None
        record.checks["checker"] = "ok"


def _constant_bytes(graph: gs.Graph) -> int:
    return sum(constant_nbytes(t) for sub in iter_graphs(graph) for t in sub.tensors().values() if isinstance(t, gs.Constant))


class Verifier:
    """Reference outputs on fixed seeded inputs, and comparisons against them."""

    def __init__(self, original: onnx.ModelProto, ctx: PassContext, rtol: float = 1e-4, atol: float = 1e-5):
        self.rtol, self.atol = rtol, atol
        self.skipped: str | None = None
        self.reference: dict[str, Any] | None = None
        self.feeds: dict[str, Any] = {}
        ops = {n.op_type for n in original.graph.node}
        if ops & NONDETERMINISTIC:
            self.skipped = f"the model has random ops ({', '.join(sorted(ops & NONDETERMINISTIC))})"
            return
        try:
            self.feeds = random_feeds(input_specs(original, ctx.input_shapes, ctx.warnings), seed=ctx.seed)
            self.reference = run_model(original, self.feeds)
        except (BackendError, ModelInvalidError, ConfigError) as exc:  # ConfigError: inputs we cannot generate (strings)
            self.skipped = str(exc)
        if self.skipped:
            ctx.warn(f"numeric verification skipped: {self.skipped}")

    def compare(self, model: onnx.ModelProto) -> tuple[bool, str, dict[str, Any]]:
        outputs = run_model(model, self.feeds)
        diff = output_difference(self.reference, outputs)
        ok, why = outputs_match(diff, self.rtol, self.atol)
        return ok, why, {"outputs": outputs, "diff": diff}


class VerifyEachInstrument(Instrument):
    """`--verify each`: compare after every pass, so the first pass that breaks equivalence is named."""

    def __init__(self, verifier: Verifier, template: onnx.ModelProto):
        self.verifier = verifier
        self.template = template

    def after_pass(self, p: Pass, graph: gs.Graph, ctx: PassContext, record: PassRecord) -> None:
        if self.verifier.skipped or not record.changed:
            return
        model = export_model(graph, self.template)
        try:
            ok, why, detail = self.verifier.compare(model)
        except BackendError as exc:
            raise VerificationError(f"pass {p.name} produced a model onnxruntime cannot run: {exc}") from None
        worst = max((d.get("max_rel", 0.0) for d in detail["diff"].values()), default=0.0)
        record.checks["max_rel_error"] = worst
        if p.exact and not ok:
            raise VerificationError(f"pass {p.name} changed the model's outputs: {why}")
        if not p.exact:
            self.verifier.reference = detail["outputs"]
