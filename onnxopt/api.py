"""`onnxopt.compile`: load, run the target's passes, verify, profile, save. The CLI is a thin layer over it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import onnx

from onnxopt._version import __version__
from onnxopt.calibration import open_calibration
from onnxopt.errors import ConfigError, TargetNotAvailableError, VerificationError
from onnxopt.graphs import export_model, import_graph
from onnxopt.inputs import input_specs, random_feeds
from onnxopt.inspection import model_summary
from onnxopt.instruments import CheckerInstrument, Verifier, VerifyEachInstrument
from onnxopt.ir import check_model, load_model, save_model
from onnxopt.validation import nonfinite_tensors
from onnxopt.pipeline import PassContext, PassManager, build_passes
from onnxopt.recipes import apply_overrides, insert_structural_passes, load_recipe_file, load_target
from onnxopt.report import CompileReport

VERIFY_MODES = ("end", "each", "off")


@dataclass
class CompileResult:
    model: onnx.ModelProto
    report: CompileReport
    output_path: Path | None = None


def default_output_path(source: Path, target: str) -> Path:
    return source.with_name(f"{source.stem}.{target}.onnx")


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


def _check_output_path(source: Path | None, output: Path | None) -> None:
    if output is None:
        return
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"output {output} must end in .onnx")
    if source is not None and output.resolve() == source.resolve():
        raise ConfigError(f"output {output} is the input model; onnxopt never overwrites its input, choose another -o")
    if not output.parent.resolve().is_dir():
        raise ConfigError(f"output folder {output.parent} does not exist")


def compile(
    model: str | os.PathLike | onnx.ModelProto,
    target: str = "ort-fp32",
    output: str | os.PathLike | None = None,
    *,
    calibration: Any = None,
    calibration_limit: int | None = None,
    recipe: str | os.PathLike | dict | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra_passes: list[dict[str, Any]] | tuple = (),
    options: dict[str, Any] | None = None,
    emit: str = "auto",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    input_ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
    engine: str | os.PathLike | None = None,
    verify: str | None = None,
    profile: bool = True,
    profile_iters: int = 50,
    op_breakdown: bool = False,
    threads: int = 0,
    seed: int = 0,
    report: str | os.PathLike | None = None,
    evaluation_data: Any = None,
    labels: Any = None,
    save: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> CompileResult:
    """Optimize a model for a target and report what changed.

    `model` is a path or an in-memory ModelProto (never modified). The output is written only when
    `output` is given, or (for a path input) to `<stem>.<target>.onnx` beside it unless `save=False`.
    `extra_passes` adds structural passes (pruning, depthwise) to the recipe; `options` holds
    compile-level knobs passes read from ctx.options (e.g. max_drop); `emit="onnx"` stops after
    writing the optimized ONNX, without building or profiling a runtime artifact.
    TensorRT targets (backend "tensorrt") also run the TensorRT readiness check, write the ONNX,
    then build, save (`engine`, default `<stem>.<target>.engine` beside the ONNX) and profile the
    engine; `input_ranges` gives (min, opt, max) shapes for its optimization profile. Where TensorRT
    or a CUDA device is missing they stop with TargetNotAvailableError after writing the ONNX (and
    the report), unless emit="onnx".
    `evaluation_data` (+ `labels`) measures fidelity and accuracy on real data into report.evaluation;
    `report` writes JSON, or HTML / Markdown for a .html / .md name.
    User mistakes raise OnnxoptError.
    """
    say = log or (lambda message: None)
    source = None if isinstance(model, onnx.ModelProto) else Path(model)
    if emit not in ("auto", "onnx"):
        raise ConfigError(f"unknown emit mode {emit!r}; use auto or onnx")
    recipe_dict = resolve_recipe(target, recipe, overrides, extra_passes)
    target_name = recipe_dict.get("name", target)
    out_path = Path(output) if output is not None else None
    if out_path is None and source is not None and save is not False:
        out_path = default_output_path(source, target_name)
    if save is False:
        out_path = None
    _check_output_path(source, out_path)
    verify_cfg = dict(recipe_dict.get("verify", {}))
    mode = verify or verify_cfg.get("mode", "end")
    if mode not in VERIFY_MODES:
        raise ConfigError(f"unknown verify mode {mode!r}; use one of {', '.join(VERIFY_MODES)}")
    passes = build_passes(recipe_dict["passes"])
    backend_name = recipe_dict.get("backend", "ort")
    engine_options = _engine_options(recipe_dict) if backend_name == "tensorrt" else None
    engine_path = _engine_path(engine, source, out_path, target_name) if backend_name == "tensorrt" else None

    say(f"loading {source or 'model'}")
    original = load_model(model)
    shapes = dict(input_shapes or {})
    for name, (_, opt, _) in dict(input_ranges or {}).items():
        shapes.setdefault(name, tuple(opt))
    calib = open_calibration(calibration, original, limit=calibration_limit, input_shapes=shapes) if calibration is not None else None
    ctx = PassContext(
        target=target_name, teacher=original, calibration=calib, input_shapes=shapes, seed=seed, options=dict(options or {})
    )
    nonfinite = nonfinite_tensors(original)
    if nonfinite:
        names = ", ".join(nonfinite[:5]) + (f" and {len(nonfinite) - 5} more" if len(nonfinite) > 5 else "")
        ctx.warn(f"weights {names} hold NaN or Inf values; outputs that depend on them will be NaN or Inf")
    specs = input_specs(original, ctx.input_shapes, ctx.warnings)
    before = model_summary(original, input_shapes=ctx.input_shapes)

    verifier = None
    if mode != "off":
        verifier = Verifier(original, ctx, rtol=float(verify_cfg.get("rtol", 1e-4)), atol=float(verify_cfg.get("atol", 1e-5)))
    # Per-pass checks cost an export each; end to end (the default) checks the final model only.
    instruments = [CheckerInstrument(original)] if mode == "each" else []
    if mode == "each" and verifier is not None:
        instruments.append(VerifyEachInstrument(verifier, original))

    say(f"running {len(passes)} passes for {target_name}")
    graph = import_graph(original)
    records = PassManager(passes, instruments).run(graph, ctx)
    optimized = export_model(graph, original)
    check_model(optimized, weights=False)  # exported from arrays: their sizes fit their shapes

    verification = _final_verification(mode, verifier, optimized, records)
    after = model_summary(optimized, input_shapes=ctx.input_shapes)

    trt_check = None
    if backend_name == "tensorrt":
        trt_check = _check_tensorrt(optimized, recipe_dict, input_ranges, shapes, ctx)

    latency, breakdown = None, None
    ungeneratable = [f"{s.name} ({s.dtype})" for s in specs if s.dtype.kind not in "fiub"]
    if profile and emit != "onnx" and backend_name == "ort" and ungeneratable:
        ctx.warn(f"profiling skipped: onnxopt cannot generate data for input(s) {', '.join(ungeneratable)}")
    elif profile and emit != "onnx" and backend_name == "ort":
        say("profiling original vs optimized (interleaved)")
        latency, breakdown = _profile(recipe_dict, original, optimized, specs, seed, profile_iters, threads, op_breakdown)

    evaluation = None
    if evaluation_data is not None:
        from onnxopt.evaluation import evaluate

        say("evaluating original vs optimized on the evaluation data")
        evaluation = evaluate(original, optimized, evaluation_data, labels, input_shapes=shapes).to_dict()

    result_report = CompileReport(
        target=target_name,
        source=str(source) if source else None,
        output=str(out_path) if out_path else None,
        before=before,
        after=after,
        passes=records,
        verification=verification,
        latency=latency,
        op_breakdown=breakdown,
        artifacts=_reportable(ctx.artifacts),
        warnings=list(ctx.warnings),
        version=__version__,
        trt_check=trt_check,
        evaluation=evaluation,
    )
    if out_path is not None:
        save_model(optimized, out_path)
    if engine_options is not None and emit != "onnx":
        try:
            result_report.engine = _lower_tensorrt(
                engine_options, optimized, input_ranges, shapes, specs, seed, engine_path, out_path, target_name,
                profile, profile_iters, say,
            )
        except TargetNotAvailableError:
            if report is not None:
                result_report.save(report)
            raise
    if report is not None:
        result_report.save(report)
    return CompileResult(model=optimized, report=result_report, output_path=out_path)


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


def _profile(recipe, original, optimized, specs, seed, iters, threads, with_breakdown):
    from onnxopt.backends import get_backend

    backend = get_backend(recipe.get("backend", "ort"), threads=threads)
    feeds = random_feeds(specs, seed=seed)
    comparison = backend.compare(original, optimized, feeds, warmup=max(iters // 10, 2), iters=iters)
    breakdown = None
    if with_breakdown and hasattr(backend, "op_breakdown"):
        breakdown = {
            "original": backend.op_breakdown(original, feeds),
            "optimized": backend.op_breakdown(optimized, feeds),
        }
    return comparison.to_dict(), breakdown


def _reportable(artifacts: dict[str, Any]) -> dict[str, Any]:
    """Artifacts that passes marked for the report (keys starting with 'report:')."""
    return {k.split(":", 1)[1]: v for k, v in artifacts.items() if k.startswith("report:")}


# --- TensorRT targets ---------------------------------------------------------------------------


def _engine_options(recipe: dict[str, Any]):
    from onnxopt.backends.tensorrt import EngineOptions

    return EngineOptions.from_recipe(recipe)


def _engine_path(engine, source: Path | None, out_path: Path | None, target: str) -> Path | None:
    from onnxopt.backends.tensorrt import default_engine_path

    if engine is not None:
        path = Path(engine)
        if source is not None and path.resolve() == source.resolve():
            raise ConfigError(f"--engine {path} is the input model; choose another path")
        if not path.parent.resolve().is_dir():
            raise ConfigError(f"engine folder {path.parent} does not exist")
        return path
    if out_path is None:
        return None
    return default_engine_path(out_path, source.stem if source is not None else out_path.stem, target)


def _profiles(input_ranges, shapes) -> dict[str, tuple]:
    """Optimization profiles: the given (min, opt, max) ranges, else fixed shapes as min = opt = max."""
    ranges = {name: tuple(tuple(s) for s in r) for name, r in dict(input_ranges or {}).items()}
    for name, shape in shapes.items():
        ranges.setdefault(name, (tuple(shape),) * 3)
    return ranges


def _check_tensorrt(model, recipe, input_ranges, shapes, ctx) -> dict[str, Any]:
    from onnxopt.backends.trt_check import check_model as check_trt

    result = check_trt(model, _profiles(input_ranges, shapes), precision=recipe.get("precision"))
    for finding in result.errors:
        ctx.warn(f"TensorRT check: {finding.line()}")
    return result.to_dict()


def _lower_tensorrt(options, optimized, input_ranges, shapes, specs, seed, engine_path, out_path, target, profile, iters, say):
    from onnxopt.backends import tensorrt as trt_backend
    from onnxopt.runtime import run_model

    missing = trt_backend.availability()
    if missing:
        wrote = f"the TensorRT-ready ONNX is written to {out_path}; " if out_path is not None else ""
        raise TargetNotAvailableError(
            f"target {target} cannot build its engine here: {missing}; {wrote}"
            f"use --emit onnx to write the ONNX alone (exit 0) and build the engine on a machine with TensorRT 10 and a CUDA GPU"
        )
    backend = trt_backend.TensorRTBackend(options=options, profiles=_profiles(input_ranges, shapes))
    feeds = random_feeds(specs, seed=seed)
    return backend.lower(
        optimized,
        feeds,
        engine_path=engine_path,
        reference=run_model(optimized, feeds),
        warmup=max(iters // 10, 2) if profile else 1,
        iters=iters if profile else 1,
        layer_runs=10 if profile else 1,
        log=say,
    )
