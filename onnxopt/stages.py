"""Compile as stages over one CompileOptions value.

    load + validate -> optimize (pass manager) -> export + verify -> evaluate -> write
        -> lower + profile (the target's backend) -> report

Each stage is a small function that returns a typed result; the CompileReport is assembled from
those results at the end and never patched. `onnxopt.compile` runs them in order (`run_compile`);
the gate runs the same stages and adds its verdict. Evaluation comes before writing so that bad
evaluation data leaves no output behind; lowering comes after writing because a TensorRT engine
that cannot be built here still leaves the TensorRT-ready ONNX.

Like api and gate, this is the layer above the core: it asks the backends registry for the
target's backend; the core modules (ir, pipeline, instruments, ...) import no backend or pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxopt._version import __version__
from onnxopt.backends import backend_for
from onnxopt.backends.base import Artifact, LowerRequest
from onnxopt.calibration import open_calibration
from onnxopt.errors import ConfigError, TargetNotAvailableError, VerificationError
from onnxopt.evaluation import evaluate, overlap_warning
from onnxopt.graphs import export_model, import_graph
from onnxopt.inputs import InputSpec, input_specs, random_feeds
from onnxopt.inspection import model_summary
from onnxopt.instruments import CheckerInstrument, Verifier, VerifyEachInstrument
from onnxopt.ir import check_model, load_model, save_model
from onnxopt.pipeline import Pass, PassContext, PassManager, PassRecord, build_passes
from onnxopt.recipes import (
    apply_overrides,
    insert_structural_passes,
    load_recipe_file,
    load_target,
)
from onnxopt.report import CompileReport
from onnxopt.targets import Target, recipe_name
from onnxopt.validation import nonfinite_tensors

VERIFY_MODES = ("end", "each", "off")
Log = Callable[[str], None]


@dataclass
class CompileOptions:
    """Everything a compile is told, gathered once (by the CLI, or by `onnxopt.compile`'s keywords).

    `output` is the only place the optimized ONNX is written (None: nowhere); `engine` where a
    backend writes its artifact (None: beside `output`, or nowhere). `options` holds compile-level
    knobs passes read from ctx.options (e.g. max_drop); `emit="onnx"` stops before lowering.
    """

    target: str = "ort-fp32"
    output: Path | None = None
    calibration: Any = None
    calibration_limit: int | None = None
    recipe: str | os.PathLike | dict | None = None
    overrides: tuple[str, ...] = ()
    extra_passes: tuple[dict[str, Any], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    emit: str = "auto"
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    engine: Path | None = None
    verify: str | None = None
    profile: bool = True
    profile_iters: int = 50
    op_breakdown: bool = False
    threads: int = 0
    seed: int = 0
    report: Path | None = None
    evaluation_data: Any = None
    labels: Any = None
    metric: Callable | None = None
    eval_limit: int | None = None
    log: Log | None = None

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


# --- load + validate ------------------------------------------------------------------------------


@dataclass
class Loaded:
    """The original model, read once and checked, and everything resolved from the options."""

    source: Path | None
    model: onnx.ModelProto
    target: Target
    recipe: dict[str, Any]
    passes: list[Pass]
    verify_mode: str
    ctx: PassContext
    specs: list[InputSpec]
    summary: dict[str, Any]
    engine_path: Path | None


def resolve_recipe(target: str, recipe: str | os.PathLike | dict | None, overrides, extra_passes=()) -> dict[str, Any]:
    """The target's recipe (or a given one), plus structural passes from flags, plus --set overrides."""
    if isinstance(recipe, dict):
        base = dict(recipe)
    elif recipe is not None:
        base = load_recipe_file(recipe)
    else:
        base = load_target(target)
    base = insert_structural_passes(base, list(extra_passes or ()))
    return apply_overrides(base, list(overrides or ()))


def resolve_target(recipe_dict: dict[str, Any], target: str, recipe: str | os.PathLike | dict | None) -> Target:
    """The Target of the resolved recipe; a recipe file without `name` goes by its file stem."""
    if recipe is None:
        default = target
    elif isinstance(recipe, dict):
        default = "custom"
    else:
        default = recipe_name(recipe)
    return Target.from_recipe(recipe_dict, default)


def load(model: str | os.PathLike | onnx.ModelProto, opts: CompileOptions) -> Loaded:
    """Resolve the recipe and target, check every option, then read and validate the model once."""
    source = None if isinstance(model, onnx.ModelProto) else Path(model)
    if opts.emit not in ("auto", "onnx"):
        raise ConfigError(f"unknown emit mode {opts.emit!r}; use auto or onnx")
    recipe = resolve_recipe(opts.target, opts.recipe, opts.overrides, opts.extra_passes)
    target = resolve_target(recipe, opts.target, opts.recipe)
    _check_output_path(source, opts.output)
    mode = opts.verify or target.verify.get("mode", "end")
    if mode not in VERIFY_MODES:
        raise ConfigError(f"unknown verify mode {mode!r}; use one of {', '.join(VERIFY_MODES)}")
    passes = build_passes(recipe["passes"])
    backend_for(target)  # a bad [engine] table or backend name fails here, before any work
    engine_path = _engine_path(opts.engine, source, opts.output, target.name)

    opts.say(f"loading {source or 'model'}")
    upgrades: list = []  # a model below opset 7 comes back upgraded (onnxopt.upgrade); the report says so
    original = load_model(model, upgrades=upgrades)
    shapes = dict(opts.input_shapes or {})
    for name, (_, opt, _) in dict(opts.input_ranges or {}).items():
        shapes.setdefault(name, tuple(opt))
    calib = None
    if opts.calibration is not None:
        calib = open_calibration(opts.calibration, original, limit=opts.calibration_limit, input_shapes=shapes)
    ctx = PassContext(target=target, teacher=original, calibration=calib, input_shapes=shapes, seed=opts.seed, options=dict(opts.options or {}))
    for upgrade in upgrades:
        ctx.warn(upgrade.note())
        ctx.artifacts["report:opset_upgrade"] = upgrade.to_dict()
    nonfinite = nonfinite_tensors(original)
    if nonfinite:
        names = ", ".join(nonfinite[:5]) + (f" and {len(nonfinite) - 5} more" if len(nonfinite) > 5 else "")
        ctx.warn(f"weights {names} hold NaN or Inf values; outputs that depend on them will be NaN or Inf")
    specs = input_specs(original, ctx.input_shapes, ctx.warnings)
    summary = model_summary(original, input_shapes=ctx.input_shapes)
    return Loaded(source, original, target, recipe, passes, mode, ctx, specs, summary, engine_path)


def _check_output_path(source: Path | None, output: Path | None) -> None:
    if output is None:
        return
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"output {output} must end in .onnx")
    if source is not None and output.resolve() == source.resolve():
        raise ConfigError(f"output {output} is the input model; onnxopt never overwrites its input, choose another -o")
    if not output.parent.resolve().is_dir():
        raise ConfigError(f"output folder {output.parent} does not exist")


def _engine_path(engine: Path | None, source: Path | None, output: Path | None, target: str) -> Path | None:
    """Where the backend's artifact goes: the given path, else `<stem>.<target>.engine` beside the output."""
    if engine is not None:
        path = Path(engine)
        if source is not None and path.resolve() == source.resolve():
            raise ConfigError(f"--engine {path} is the input model; choose another path")
        if not path.parent.resolve().is_dir():
            raise ConfigError(f"engine folder {path.parent} does not exist")
        return path
    if output is None:
        return None
    stem = source.stem if source is not None else output.stem
    return output.parent / f"{stem}.{target}.engine"


# --- optimize -------------------------------------------------------------------------------------


@dataclass
class Optimized:
    """The optimized graph exported to a model, the per-pass records, and the verifier to use."""

    model: onnx.ModelProto
    records: list[PassRecord]
    verifier: Verifier | None


def optimize(loaded: Loaded, opts: CompileOptions) -> Optimized:
    """The recipe's passes in order under the pass manager, with the instruments the verify mode asks for."""
    ctx = loaded.ctx
    verifier = None
    if loaded.verify_mode != "off":
        rtol, atol = float(loaded.target.verify.get("rtol", 1e-4)), float(loaded.target.verify.get("atol", 1e-5))
        verifier = Verifier(loaded.model, ctx, rtol=rtol, atol=atol)
    # Per-pass checks cost an export each; end to end (the default) checks the final model only.
    instruments = [CheckerInstrument(loaded.model)] if loaded.verify_mode == "each" else []
    if loaded.verify_mode == "each" and verifier is not None:
        instruments.append(VerifyEachInstrument(verifier, loaded.model))
    opts.say(f"running {len(loaded.passes)} passes for {loaded.target}")
    graph = import_graph(loaded.model)
    records = PassManager(loaded.passes, instruments).run(graph, ctx)
    model = export_model(graph, loaded.model)
    check_model(model, weights=False)  # exported from arrays: their sizes fit their shapes
    return Optimized(model, records, verifier)


def given(loaded: Loaded, model: Any) -> Optimized:
    """An already optimized model (the gate's --optimized) in the place of the optimize stage."""
    return Optimized(load_model(model), [], None)


# --- export + verify ------------------------------------------------------------------------------


@dataclass
class Exported:
    model: onnx.ModelProto
    verification: dict[str, Any]
    summary: dict[str, Any]


def export(loaded: Loaded, optimized: Optimized) -> Exported:
    """Verify the optimized model against the original and describe it."""
    verification = _final_verification(loaded.verify_mode, optimized.verifier, optimized.model, optimized.records)
    return Exported(optimized.model, verification, model_summary(optimized.model, input_shapes=loaded.ctx.input_shapes))


def _final_verification(mode: str, verifier: Verifier | None, optimized: onnx.ModelProto, records) -> dict[str, Any]:
    if verifier is None:
        return {"mode": "off"}
    if verifier.skipped:
        return {"mode": mode, "skipped": verifier.skipped}
    all_exact = all(r.exact for r in records)
    if mode == "each":
        worst = max((r.checks.get("max_rel_error", 0.0) for r in records), default=0.0)
        return {"mode": mode, "ok": True, "max_rel_error": worst, "exact": all_exact}
    ok, why, detail = verifier.compare(optimized)
    worst = max((d.get("max_rel", 0.0) for d in detail["diff"].values()), default=0.0)
    if all_exact and not ok:
        raise VerificationError(f"the optimized model's outputs differ from the original's: {why}; rerun with --verify each to name the pass")
    cosines = [d.get("cosine", 1.0) for d in detail["diff"].values()]
    return {"mode": mode, "ok": ok, "max_rel_error": worst, "min_cosine": min(cosines, default=1.0), "exact": all_exact}


# --- evaluate -------------------------------------------------------------------------------------


@dataclass
class Evaluated:
    result: Any  # onnxopt.evaluation.EvaluationResult
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return self.result.to_dict()


def evaluate_stage(loaded: Loaded, exported: Exported, opts: CompileOptions) -> Evaluated | None:
    """Fidelity and accuracy of the optimized ONNX against the original on real data (ONNX Runtime)."""
    if opts.evaluation_data is None:
        return None
    opts.say("evaluating original vs optimized on the evaluation data")
    started = time.perf_counter()
    result = evaluate(
        loaded.model, exported.model, opts.evaluation_data, opts.labels, opts.metric,
        limit=opts.eval_limit, input_shapes=loaded.ctx.input_shapes, calibration=loaded.ctx.calibration,
    )
    if result.calibration_overlap:
        loaded.ctx.warn(overlap_warning(result.calibration_overlap, result.samples))
    return Evaluated(result, time.perf_counter() - started)


def write(exported: Exported, opts: CompileOptions) -> Path | None:
    if opts.output is not None:
        save_model(exported.model, opts.output)
    return opts.output


# --- lower + profile ------------------------------------------------------------------------------


@dataclass
class Lowered:
    """The backend's readiness findings, its artifact (None when not built), and its report fields."""

    readiness: dict[str, Any] | None
    artifact: Artifact | None
    section: dict[str, Any]
    unavailable: str | None = None  # why the artifact could not be built here (the compile then fails)


def input_ranges(loaded: Loaded, opts: CompileOptions) -> dict[str, tuple]:
    """Optimization profiles: the given (min, opt, max) ranges, else fixed shapes as min = opt = max."""
    ranges = {name: tuple(tuple(s) for s in r) for name, r in dict(opts.input_ranges or {}).items()}
    for name, shape in loaded.ctx.input_shapes.items():
        ranges.setdefault(name, (tuple(shape),) * 3)
    return ranges


def target_backend(loaded: Loaded, opts: CompileOptions):
    return backend_for(loaded.target, threads=opts.threads, input_ranges=input_ranges(loaded, opts))


def check_readiness(loaded: Loaded, exported: Exported, opts: CompileOptions) -> Lowered:
    """The backend's readiness check alone: what `--emit onnx` and the gate report."""
    backend = target_backend(loaded, opts)
    readiness = backend.readiness(exported.model, loaded.ctx.warn)
    return Lowered(readiness, None, backend.report_section(None, readiness))


def lower(loaded: Loaded, exported: Exported, opts: CompileOptions, output: Path | None) -> Lowered:
    """Readiness check, then the backend builds and measures its artifact (unless emit="onnx").

    A backend that cannot run here leaves `unavailable` saying what is missing; run_compile writes
    the report with the readiness findings, then raises TargetNotAvailableError with it."""
    backend = target_backend(loaded, opts)
    readiness = backend.readiness(exported.model, loaded.ctx.warn)
    if opts.emit == "onnx":
        return Lowered(readiness, None, backend.report_section(None, readiness))
    missing = backend.availability()
    if missing:
        wrote = f"the {backend.display_name}-ready ONNX is written to {output}; " if output is not None else ""
        why = (
            f"target {loaded.target} cannot build its {backend.artifact_kind} here: {missing}; {wrote}"
            f"use --emit onnx to write the ONNX alone (exit 0) and build the {backend.artifact_kind} on a machine with {backend.requirement}"
        )
        return Lowered(readiness, None, backend.report_section(None, readiness), unavailable=why)
    ungeneratable = [f"{s.name} ({s.dtype})" for s in loaded.specs if s.dtype.kind not in "fiub"]
    if ungeneratable and opts.profile:
        loaded.ctx.warn(f"profiling skipped: onnxopt cannot generate data for input(s) {', '.join(ungeneratable)}")
        return Lowered(readiness, None, backend.report_section(None, readiness))
    request = LowerRequest(
        feeds=random_feeds(loaded.specs, seed=opts.seed),
        baseline=loaded.model,
        path=loaded.engine_path,
        profile=opts.profile,
        iters=opts.profile_iters,
        op_breakdown=opts.op_breakdown,
        log=opts.say,
    )
    artifact = backend.lower(exported.model, loaded.target, request)
    return Lowered(readiness, artifact, backend.report_section(artifact, readiness))


# --- report ---------------------------------------------------------------------------------------


def assemble_report(
    loaded: Loaded,
    optimized: Optimized,
    exported: Exported,
    output: Path | None,
    lowered: Lowered | None,
    evaluated: Evaluated | None,
    *,
    latency: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
) -> CompileReport:
    """The CompileReport from the stages' results (and the gate's verdict when there is one)."""
    section = dict(lowered.section) if lowered is not None else {}
    if latency is not None:
        section["latency"] = latency
    return CompileReport(
        target=loaded.target.name,
        source=str(loaded.source) if loaded.source else None,
        output=str(output) if output else None,
        before=loaded.summary,
        after=exported.summary,
        passes=optimized.records,
        verification=exported.verification,
        artifacts=_reportable(loaded.ctx.artifacts),
        warnings=list(loaded.ctx.warnings),
        version=__version__,
        evaluation=evaluated.to_dict() if evaluated is not None else None,
        gate=gate,
        **section,
    )


def _reportable(artifacts: dict[str, Any]) -> dict[str, Any]:
    """Artifacts that passes marked for the report (keys starting with 'report:')."""
    return {k.split(":", 1)[1]: v for k, v in artifacts.items() if k.startswith("report:")}


# --- the whole compile ----------------------------------------------------------------------------


@dataclass
class Compiled:
    model: onnx.ModelProto
    report: CompileReport
    output: Path | None
    artifact: Artifact | None


def run_compile(model: str | os.PathLike | onnx.ModelProto, opts: CompileOptions) -> Compiled:
    """The stages in order; the report is written (when asked) even when the backend is missing here."""
    loaded = load(model, opts)
    optimized = optimize(loaded, opts)
    exported = export(loaded, optimized)
    evaluated = evaluate_stage(loaded, exported, opts)
    output = write(exported, opts)
    lowered = lower(loaded, exported, opts, output)
    report = assemble_report(loaded, optimized, exported, output, lowered, evaluated)
    if opts.report is not None:
        report.save(opts.report)
    if lowered.unavailable:
        raise TargetNotAvailableError(lowered.unavailable)
    return Compiled(exported.model, report, output, lowered.artifact)
