"""Upgrading models below onnxopt's opset floor with onnx's version converter.

Old exporters (and ONNX's own conformance suite) still write opsets 1 to 6; the passes assume
opset 7's semantics (numpy broadcasting, no `consumed_inputs`, ...). Such a model is converted on
a weightless copy (the converter rewrites nodes, never weights, and would otherwise serialize and
copy every weight), the weights are put back, and the result is run beside the original in
onnxruntime on seeded inputs: it is used only when its outputs agree. Where the converter fails,
or the outputs differ, the model is refused with the converter's reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import version_converter

from onnxopt.errors import ConfigError, ModelInvalidError
from onnxopt.validation import weightless_copy

OPSET_FLOOR = 7
RTOL, ATOL = 1e-4, 1e-5  # the exact targets' verification tolerance


@dataclass(frozen=True)
class OpsetUpgrade:
    """What the load did to a model below the floor, for the report."""

    old: int
    new: int
    verified: str

    def note(self) -> str:
        return f"opset {self.old} is older than {OPSET_FLOOR}: upgraded to {self.new} with onnx's version converter ({self.verified})"

    def to_dict(self) -> dict:
        return {"from": self.old, "to": self.new, "verified": self.verified}


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def below_floor(model: onnx.ModelProto) -> bool:
    version = default_opset(model)
    return version is not None and version < OPSET_FLOOR


def upgrade_opset(model: onnx.ModelProto, target: int = OPSET_FLOOR) -> tuple[onnx.ModelProto, OpsetUpgrade]:
    """The model converted to opset `target` (weights shared with nothing: copied once) and a record
    of what was done; ModelInvalidError, with the converter's reason, when that cannot be done exactly."""
    old = default_opset(model)
    skeleton = weightless_copy(model, keep_annotations=True)
    try:
        converted = version_converter.convert_version(skeleton, target)
    except Exception as exc:  # the converter raises bare RuntimeErrors naming the adapter it lacks
        raise ModelInvalidError(
            f"opset {old} is older than {OPSET_FLOOR} and onnx's version converter cannot upgrade it "
            f"({_reason(exc)}); re-export the model at opset {OPSET_FLOOR} or later"
        ) from None
    _restore_weights(model, converted)
    converted.ir_version = max(converted.ir_version, model.ir_version, 3)
    verified = _verify(model, converted)
    return converted, OpsetUpgrade(old, target, verified)


def _reason(exc: BaseException) -> str:
    """The converter's words without its source location ('.../convert.cc:101: convert_graph: Assertion ... failed: ')."""
    text = " ".join(str(exc).split())
    text = text.split(" failed: ", 1)[-1].replace("$", "")
    return text[:300] or type(exc).__name__


def _restore_weights(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """Put back the tensors the weightless copy turned into typed inputs (initializers, and the
    values of Constant nodes, which come back as initializers)."""
    declared = {i.name for i in original.graph.input}
    tensors = {t.name: t for t in original.graph.initializer}
    for node in original.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if node.op_type == "Constant" and value is not None and node.output:
            tensors[node.output[0]] = value
    stand_ins = [i.name for i in converted.graph.input if i.name not in declared and i.name in tensors]
    kept = [i for i in converted.graph.input if i.name not in stand_ins]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    for name in stand_ins:
        init = converted.graph.initializer.add()
        init.CopyFrom(tensors[name])
        init.name = name


def _verify(original: onnx.ModelProto, converted: onnx.ModelProto) -> str:
    """Both models in onnxruntime on the same seeded inputs; raises when their outputs differ."""
    import onnxruntime as ort

    from onnxopt.inputs import input_specs, random_feeds

    try:
        feeds = random_feeds(input_specs(original), seed=0)
    except (ConfigError, ModelInvalidError) as exc:
        return f"not verified: {exc}"
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = lambda m: dict(zip(  # noqa: E731
        [o.name for o in m.graph.output],
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds),
    ))
    try:
        reference = run(original)
    except Exception as exc:
        return f"not verified: onnxruntime cannot run the original ({_reason(exc)[:120]})"
    try:
        outputs = run(converted)
    except Exception as exc:
        raise ModelInvalidError(
            f"opset {default_opset(original)} is older than {OPSET_FLOOR}; onnx's version converter upgraded it, but "
            f"onnxruntime cannot run the result ({_reason(exc)[:200]}); re-export the model at opset {OPSET_FLOOR} or later"
        ) from None
    why = _first_difference(reference, outputs)
    if why:
        raise ModelInvalidError(
            f"opset {default_opset(original)} is older than {OPSET_FLOOR}; onnx's version converter upgraded it, but the "
            f"upgraded model's outputs differ from the original's ({why}); re-export the model at opset {OPSET_FLOOR} or later"
        )
    return "outputs equal to the original's in onnxruntime"


def _first_difference(reference: dict, outputs: dict) -> str:
    """'' when every output is within ATOL or RTOL of the reference's largest magnitude (the
    verification rule of onnxopt.evaluation, which this module cannot import: it imports ir)."""
    for name, ref in reference.items():
        ref, out = np.asarray(ref), np.asarray(outputs.get(name))
        if ref.shape != out.shape:
            return f"output {name} is of another shape"
        if ref.dtype.kind not in "fc":
            if np.count_nonzero(ref != out):
                return f"output {name} differs"
            continue
        r, o = ref.astype(np.float64), out.astype(np.float64)
        same = (np.isnan(r) & np.isnan(o)) | (r == o)
        error = float(np.max(np.where(same, 0.0, np.abs(r - o)), initial=0.0))
        scale = float(np.max(np.abs(np.where(np.isfinite(r), r, 0.0)), initial=0.0))
        if np.isnan(error) or (error > ATOL and error > RTOL * scale):
            return f"output {name} differs by {error:.3g}"
    return ""
