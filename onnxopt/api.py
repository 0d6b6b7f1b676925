"""`onnxopt.compile`: the library entry point, a keyword front over the compile stages (onnxopt/stages.py).

It writes only what it is told to: the optimized ONNX to `output`, the report to `report`, an
engine to `engine` (or beside `output`). The CLI gives `output` its default `<stem>.<target>.onnx`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from onnxopt import report_html, report_md  # noqa: F401  (they register the .html and .md report renderers)
from onnxopt.backends.base import Artifact
from onnxopt.report import CompileReport
from onnxopt.stages import (
    VERIFY_MODES,
    CompileOptions,
    resolve_recipe,
    resolve_target,
    run_compile,
)

__all__ = ["VERIFY_MODES", "CompileOptions", "CompileResult", "compile", "default_output_path", "resolve_recipe", "resolve_target"]


@dataclass
class CompileResult:
    model: onnx.ModelProto
    report: CompileReport
    output_path: Path | None = None
    artifact: Artifact | None = None  # what the target's backend built (e.g. the TensorRT engine), if anything


def default_output_path(source: Path, target: str) -> Path:
    """`<stem>.<target>.onnx` beside the input: the CLI's default -o."""
    return source.with_name(f"{source.stem}.{target}.onnx")


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

    `model` is a path or an in-memory ModelProto (never modified). Nothing is written unless asked:
    the optimized ONNX goes to `output`, the report to `report` (JSON, or HTML / Markdown for a
    .html / .md name). `save=True` (deprecated) still writes `<stem>.<target>.onnx` beside a path
    input. `extra_passes` adds structural passes (pruning, depthwise) to the recipe; `options`
    holds compile-level knobs passes read from ctx.options (e.g. max_drop); `emit="onnx"` stops
    before the backend builds anything. The target's backend then lowers and profiles the model:
    ONNX Runtime times it against the original; TensorRT builds the engine (written to `engine`,
    or beside `output`) where TensorRT and a CUDA device exist, and otherwise raises
    TargetNotAvailableError (after writing `output` and `report`) unless emit="onnx";
    `input_ranges` gives (min, opt, max) shapes for its optimization profile.
    `evaluation_data` (+ `labels`) measures fidelity and accuracy on real data into report.evaluation.
    User mistakes raise OnnxoptError.
    """
    out_path = Path(output) if output is not None else None
    if save is True and out_path is None:
        warnings.warn(
            "onnxopt.compile(save=True) is deprecated: pass output=PATH; the library writes only what it is told to",
            DeprecationWarning,
            stacklevel=2,
        )
        if not isinstance(model, onnx.ModelProto):
            recipe_dict = resolve_recipe(target, recipe, overrides, extra_passes)
            out_path = default_output_path(Path(model), resolve_target(recipe_dict, target, recipe).name)
    if save is False:
        out_path = None
    opts = CompileOptions(
        target=target,
        output=out_path,
        calibration=calibration,
        calibration_limit=calibration_limit,
        recipe=recipe,
        overrides=tuple(overrides or ()),
        extra_passes=tuple(extra_passes or ()),
        options=dict(options or {}),
        emit=emit,
        input_shapes=dict(input_shapes or {}),
        input_ranges=dict(input_ranges or {}),
        engine=Path(engine) if engine is not None else None,
        verify=verify,
        profile=profile,
        profile_iters=profile_iters,
        op_breakdown=op_breakdown,
        threads=threads,
        seed=seed,
        report=Path(report) if report is not None else None,
        evaluation_data=evaluation_data,
        labels=labels,
        log=log,
    )
    return compile_with(model, opts)


def compile_with(model: str | os.PathLike | onnx.ModelProto, opts: CompileOptions) -> CompileResult:
    """Compile with options already gathered (the CLI builds CompileOptions once)."""
    compiled = run_compile(model, opts)
    return CompileResult(model=compiled.model, report=compiled.report, output_path=compiled.output, artifact=compiled.artifact)
