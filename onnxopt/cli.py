"""The `onnxopt` command line: a thin layer over onnxopt.api.

Every failure a user can cause ends in one line on stderr and exit code 2, never a traceback
(ONNXOPT_DEBUG=1 shows it for bug reports).
"""

from __future__ import annotations

import json
import os
import sys

import click

from onnxopt._version import __version__
from onnxopt.errors import OnnxoptError

EXIT_ERROR = 2


class OnnxoptGroup(click.Group):
    """Turns exceptions into one-line errors with exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except OnnxoptError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            click.echo("onnxopt: interrupted; no output was written", err=True)
            sys.exit(130)
        except MemoryError:
            _fail("out of memory; try a smaller --input-shape or fewer calibration samples")
        except Exception as exc:  # a bug of ours; still one line for the user
            if os.environ.get("ONNXOPT_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set ONNXOPT_DEBUG=1 for the traceback)")


def _fail(message: str) -> None:
    message = " ".join(str(message).split()) or "unknown error"
    click.echo(f"onnxopt: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _log(quiet: bool):
    return (lambda message: None) if quiet else (lambda message: click.echo(f"· {message}", err=True))


input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=1x3x224x224",
    help="Concrete shape for an input with dynamic dims (repeatable); TensorRT targets take min:opt:max ranges.",
)


@click.group(cls=OnnxoptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxopt")
def main() -> None:
    """onnxopt: optimize ONNX models for ONNX Runtime and TensorRT, and report speed, size and accuracy."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # ORT's own log lines (e.g. in constant folding) would break the one-line errors


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--target", "-t", default="ort-fp32", show_default=True, help="Built-in target (see `onnxopt targets`).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output model (default: <stem>.<target>.onnx beside the input).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the compile report: report.html (a page with charts), report.md (a PR comment), else JSON.")
@click.option("--recipe", type=click.Path(dir_okay=False), help="A TOML recipe that replaces the target's.")
@click.option("--set", "overrides", multiple=True, metavar="PASS.KEY=VALUE", help="Override one pass option (repeatable).")
@click.option("--calib", "calib", metavar="PATH", help="Calibration data: a folder of .npz/.npy files, or one .npz/.npy of N samples ('random' only for smoke tests).")
@click.option("--calib-limit", type=int, default=None, help="Use at most this many calibration samples.")
@click.option("--prune", type=float, default=None, metavar="RATIO", help="Add structured channel pruning: remove this fraction of channels (needs --calib).")
@click.option("--prune-flops", type=float, default=None, metavar="X", help="Add channel pruning until at most X of the model's MACs remain.")
@click.option("--drop-blocks", type=int, default=None, metavar="N", help="Add depth pruning: remove the N residual blocks whose removal changes the outputs least (needs --calib).")
@click.option("--depthwise", is_flag=True, help="Add depthwise-separable substitution of KxK convolutions.")
@click.option("--depthwise-error", type=float, default=None, metavar="X", help="Per-layer relative output error cap for --depthwise.")
@click.option("--depthwise-flops", type=float, default=None, metavar="X", help="Substitute until at most X of the model's MACs remain.")
@click.option("--distill", type=int, default=None, metavar="STEPS", help="Add distillation after the structural passes: train all weights STEPS Adam steps so the outputs match the original's on --calib (needs onnxopt[distill]).")
@click.option("--max-drop", type=float, default=None, metavar="X", help="Accuracy budget for lossy passes (fidelity drop against the original).")
@click.option("--emit", type=click.Choice(["auto", "onnx"]), default="auto", show_default=True, help="onnx: write the optimized ONNX only, build and profile no runtime artifact.")
@click.option("--engine", "engine_path", type=click.Path(dir_okay=False), default=None, help="TensorRT targets: where to write the engine (default <stem>.<target>.engine beside the ONNX).")
@click.option("--data", "eval_data", metavar="PATH", help="Evaluation data (real samples, disjoint from --calib): adds fidelity and accuracy to the report.")
@click.option("--labels", metavar="FILE", help="A .npy of int class ids, one per --data sample: adds labeled top-1/top-5 accuracy.")
@input_shape_option
@click.option("--verify", type=click.Choice(["end", "each", "off"]), default=None, help="Numeric check: end to end (default), after every pass, or off.")
@click.option("--no-profile", is_flag=True, help="Skip the latency comparison.")
@click.option("--iters", default=50, show_default=True, help="Paired timing runs for the latency comparison.")
@click.option("--op-breakdown", is_flag=True, help="Add a per-operator time breakdown from ORT's profiler.")
@click.option("--threads", default=0, help="Intra-op threads for profiling (0 = runtime default).")
@click.option("--seed", default=0, show_default=True, help="Seed for generated inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def compile_cmd(model, target, output, report_path, recipe, overrides, calib, calib_limit, prune, prune_flops, drop_blocks, depthwise, depthwise_error, depthwise_flops, distill, max_drop, emit, engine_path, eval_data, labels, input_shapes, verify, no_profile, iters, op_breakdown, threads, seed, as_json, quiet):
    """Optimize MODEL for a target and write the optimized model."""
    from pathlib import Path

    from onnxopt import progress
    from onnxopt.api import compile_with, default_output_path
    from onnxopt.inputs import parse_input_shapes, parse_shape_ranges
    from onnxopt.stages import CompileOptions, resolve_recipe, resolve_target

    progress.set_quiet(quiet)
    if labels is not None and eval_data is None:
        raise click.UsageError("--labels needs --data")
    extra_passes = tuple(_structural_passes(prune, prune_flops, depthwise, depthwise_error, depthwise_flops, drop_blocks, distill))
    if output is None:  # the CLI's default: <stem>.<target>.onnx beside the input
        name = resolve_target(resolve_recipe(target, recipe, overrides, extra_passes), target, recipe).name
        output = default_output_path(Path(model), name)
    opts = CompileOptions(
        target=target,
        output=Path(output),
        calibration=calib,
        calibration_limit=calib_limit,
        recipe=recipe,
        overrides=tuple(overrides),
        extra_passes=extra_passes,
        options={"max_drop": max_drop} if max_drop is not None else {},
        emit=emit,
        input_shapes=parse_input_shapes(input_shapes),
        input_ranges=parse_shape_ranges(input_shapes),
        engine=Path(engine_path) if engine_path is not None else None,
        verify=verify,
        profile=not no_profile,
        profile_iters=iters,
        op_breakdown=op_breakdown,
        threads=threads,
        seed=seed,
        report=Path(report_path) if report_path is not None else None,
        evaluation_data=eval_data,
        labels=labels,
        log=_log(quiet),
    )
    result = compile_with(model, opts)
    click.echo(result.report.to_json() if as_json else result.report.summary())


def _structural_passes(prune, prune_flops, depthwise, depthwise_error, depthwise_flops, drop_blocks=None, distill=None) -> list[dict]:
    """Flags that add lossy structural passes to any target: drop blocks first, then substitute, then
    prune, then distill the result against the original."""
    entries = []
    if drop_blocks:
        entries.append({"name": "drop-blocks", "count": drop_blocks})
    if depthwise or depthwise_error is not None or depthwise_flops is not None:
        entry = {"name": "depthwise-separable"}
        if depthwise_error is not None:
            entry["max_error"] = depthwise_error
        if depthwise_flops is not None:
            entry["flops_target"] = depthwise_flops
        entries.append(entry)
    if prune is not None or prune_flops is not None:
        entry = {"name": "channel-prune"}
        if prune is not None:
            entry["ratio"] = prune
        if prune_flops is not None:
            entry["flops_target"] = prune_flops
        entries.append(entry)
    if distill is not None:
        entries.append({"name": "distill", "steps": distill})
    return entries


@main.command("profile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--iters", default=50, show_default=True)
@click.option("--warmup", default=5, show_default=True)
@click.option("--threads", default=0)
@click.option("--opt-level", type=click.Choice(["disable", "basic", "extended", "all"]), default="all", show_default=True)
@click.option("--op-breakdown", is_flag=True, help="Per-operator time from ORT's profiler.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True)
def profile_cmd(model, iters, warmup, threads, opt_level, op_breakdown, input_shapes, as_json):
    """Measure MODEL's latency in ONNX Runtime on generated inputs."""
    from onnxopt.backends.ort import OrtBackend
    from onnxopt.inputs import input_specs, parse_input_shapes, random_feeds
    from onnxopt.ir import load_model

    loaded = load_model(model)
    warnings: list[str] = []
    feeds = random_feeds(input_specs(loaded, parse_input_shapes(input_shapes), warnings))
    backend = OrtBackend(threads=threads, opt_level=opt_level)
    stats = backend.profile(loaded, feeds, warmup=warmup, iters=iters)
    data = {"latency": stats.to_dict(), "providers": backend.chosen_providers(), "warnings": warnings}
    if op_breakdown:
        data["op_breakdown"] = backend.op_breakdown(loaded, feeds)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(
        f"p50 {stats.p50_ms:.3f} ms · p90 {stats.p90_ms:.3f} ms · p99 {stats.p99_ms:.3f} ms · mean {stats.mean_ms:.3f} ms · "
        f"{stats.throughput:.1f} samples/s ({stats.iterations} runs on {', '.join(data['providers'])})"
    )
    for row in data.get("op_breakdown", []):
        click.echo(f"  {row['op_type']:<28} {row['ms_per_run']:8.3f} ms  {row['share'] * 100:5.1f}%  ({row['nodes']} nodes)")


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True)
def inspect_cmd(model, as_json):
    """Describe MODEL: inputs, outputs, opsets, ops, parameters, size, estimated MACs."""
    from onnxopt.inspection import model_summary
    from onnxopt.ir import load_model

    summary = model_summary(load_model(model))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key in ("inputs", "outputs"):
        for vi in summary[key]:
            shape = "x".join(str(d) for d in vi["shape"]) if vi["shape"] is not None else "?"
            click.echo(f"{key[:-1]:<7} {vi['name']:<24} {vi['dtype']} [{shape}]")
    click.echo(f"opsets  {', '.join(f'{d} {v}' for d, v in summary['opsets'].items())} · IR {summary['ir_version']} · {summary['producer']}")
    click.echo(f"nodes   {summary['nodes']} · parameters {summary['parameters']:,} · size {summary['size_bytes'] / 1e6:.2f} MB · MACs {summary['macs'] / 1e9:.4f} G")
    click.echo("ops     " + ", ".join(f"{op} {n}" for op, n in summary["ops"].items()))
    heavy = {op: m for op, m in summary["macs_by_op"].items() if m}
    if heavy:
        click.echo("MACs/op " + ", ".join(f"{op} {m / 1e6:.2f}M" for op, m in list(heavy.items())[:8]))


@main.command("check-trt")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=MIN:OPT:MAX",
    help="Optimization profile for a dynamic input, e.g. x=1x3x224x224:8x3x224x224:32x3x224x224 (repeatable).",
)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None, help="Also apply the rules of this precision (int8 needs Q/DQ).")
@click.option("--json", "as_json", is_flag=True)
def check_trt_cmd(model, input_shapes, precision, as_json):
    """Check MODEL for TensorRT 10 on any machine: exit 0 clean, 1 errors found, 2 bad input."""
    from onnxopt.backends.trt_check import check_model
    from onnxopt.inputs import parse_shape_ranges
    from onnxopt.ir import load_model

    report = check_model(load_model(model), parse_shape_ranges(input_shapes), precision=precision)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
    sys.exit(0 if report.ok else 1)


@main.command("eval")
@click.argument("original", type=click.Path(dir_okay=False, path_type=str))
@click.argument("optimized", type=click.Path(dir_okay=False, path_type=str))
@click.option("--data", required=True, metavar="PATH", help="Real samples: a folder of .npz/.npy files, or one .npz/.npy of N samples.")
@click.option("--labels", metavar="FILE", help="A .npy of int class ids, one per sample: adds labeled top-1/top-5 accuracy.")
@click.option("--output", "output_name", metavar="NAME", help="The classifier output the labels refer to (default: the first [batch, classes] output).")
@click.option("--limit", type=int, default=None, help="Evaluate at most this many samples.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(original, optimized, data, labels, output_name, limit, input_shapes, as_json, quiet):
    """Fidelity of OPTIMIZED against ORIGINAL on real data, and accuracy when labels are given."""
    from onnxopt import progress
    from onnxopt.evaluation import evaluate
    from onnxopt.inputs import parse_input_shapes

    progress.set_quiet(quiet)
    result = evaluate(original, optimized, data, labels, output=output_name, limit=limit, input_shapes=parse_input_shapes(input_shapes))
    if as_json:
        from onnxopt.report import _jsonable

        click.echo(json.dumps(_jsonable(result.to_dict()), indent=2))
    else:
        click.echo(result.summary())


@main.command("gate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--target", "-t", default="ort-fp32", show_default=True, help="Target to compile for (see `onnxopt targets`).")
@click.option("--recipe", type=click.Path(dir_okay=False), help="A TOML recipe that replaces the target's.")
@click.option("--optimized", type=click.Path(dir_okay=False, path_type=str), help="Judge this already compiled model instead of compiling MODEL.")
@click.option("--calib", metavar="PATH", help="Calibration data for the compile (lossy targets).")
@click.option("--data", metavar="PATH", help="Evaluation data (real samples, disjoint from --calib); needed by --max-drop and --min-fidelity.")
@click.option("--labels", metavar="FILE", help="A .npy of int class ids, one per --data sample: --max-drop then means labeled top-1 accuracy.")
@click.option("--eval-limit", type=int, default=None, help="Evaluate at most this many samples.")
@click.option("--max-drop", type=float, default=None, metavar="PTS", help="Largest allowed accuracy drop in percentage points.")
@click.option("--min-fidelity", type=float, default=None, metavar="X", help="Smallest allowed cosine similarity to the original (worst output).")
@click.option("--min-speedup", type=float, default=None, metavar="X", help="Smallest allowed speedup over the original (decided on a 95% CI).")
@click.option("--max-latency-ms", type=float, default=None, metavar="X", help="Largest allowed median latency of the optimized model (decided on a 95% CI).")
@click.option("--max-size-mb", type=float, default=None, metavar="X", help="Largest allowed size of the optimized model in MB.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the result (every threshold, measured value, pass/fail) as JSON.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write a JUnit XML file (one testcase per threshold) for CI.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the full report: .html, .md or .json.")
@click.option("--iters", default=50, show_default=True, help="Interleaved timing pairs per round.")
@click.option("--latency-rounds", default=3, show_default=True, help="Most rounds of timing while a latency threshold is inside the CI.")
@click.option("--strict-latency", is_flag=True, help="Fail a latency threshold the measurements cannot decide (default: pass it).")
@click.option("--threads", default=0, help="Intra-op threads for timing (0 = runtime default).")
@input_shape_option
@click.option("--seed", default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages or bars.")
def gate_cmd(model, target, recipe, optimized, calib, data, labels, eval_limit, max_drop, min_fidelity, min_speedup, max_latency_ms, max_size_mb, json_path, junit_path, report_path, iters, latency_rounds, strict_latency, threads, input_shapes, seed, quiet):
    """Exit 0 when MODEL, compiled for a target, meets every threshold; 1 when one fails; 2 on an error.

    Latency thresholds pass when the 95% CI of interleaved paired runs lies on the good side, fail
    when it lies on the bad side, and otherwise measure more rounds; still undecided, they pass
    (or fail with --strict-latency).
    """
    from onnxopt import progress
    from onnxopt.gate import Thresholds, run_gate, write_error_files
    from onnxopt.inputs import parse_input_shapes

    progress.set_quiet(quiet)
    thresholds = Thresholds(max_drop, min_fidelity, min_speedup, max_latency_ms, max_size_mb)
    try:
        result = run_gate(
            model,
            target,
            thresholds,
            optimized=optimized,
            recipe=recipe,
            calibration=calib,
            data=data,
            labels=labels,
            input_shapes=parse_input_shapes(input_shapes),
            iters=iters,
            latency_rounds=latency_rounds,
            strict_latency=strict_latency,
            threads=threads,
            seed=seed,
            eval_limit=eval_limit,
            log=_log(quiet),
        )
    except OnnxoptError as exc:
        write_error_files(model, target, str(exc), json_path, junit_path)
        raise
    if json_path:
        result.save_json(json_path)
    if junit_path:
        result.save_junit(junit_path)
    if report_path:
        result.report.save(report_path)
    click.echo(result.summary())
    sys.exit(0 if result.passed else 1)


@main.command("tune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--calib", required=True, metavar="PATH", help="Calibration data (real samples) for the int8 and structural passes.")
@click.option("--data", "data", required=True, metavar="PATH", help="Tuning data (real samples, disjoint from --calib) the accuracy is judged on.")
@click.option("--labels", metavar="FILE", help="A .npy of int class ids, one per --data sample: --max-drop then means labeled top-1 points.")
@click.option("--max-drop", type=float, default=None, metavar="PTS", help="Accuracy budget: largest allowed drop in percentage points.")
@click.option("--min-fidelity", type=float, default=None, metavar="X", help="Accuracy budget: smallest allowed cosine similarity to the original.")
@click.option("--max-size-mb", type=float, default=None, metavar="X", help="Also require the model to be at most this large.")
@click.option("--drop-sigmas", type=float, default=1.0, show_default=True, metavar="Z",
              help="--max-drop must hold this many standard errors above the measured drop, so the fastest of many trials is not just the luckiest (0: the estimate alone).")
@click.option("--targets", default="ort-int8,ort-fp32", show_default=True, help="Comma-separated targets to search.")
@click.option("--trials", default=40, show_default=True, help="Most trials in the study (earlier runs of a stored study count).")
@click.option("--time-budget", type=float, default=None, metavar="SECONDS", help="Start no trial after this many seconds.")
@click.option("--workers", default=1, show_default=True, help="Trials at once (local processes, or Ray tasks with --ray).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS", help="Run trials as tasks on this existing Ray cluster (HOST:PORT, ray://HOST:PORT or auto).")
@click.option("--storage", default=None, metavar="PATH|URL", help="Optuna storage: a journal file or an RDB URL; rerun to resume.")
@click.option("--study-name", default="onnxopt-tune", show_default=True, help="Study name inside --storage.")
@click.option("--seed", default=0, show_default=True)
@click.option("--iters", default=50, show_default=True, help="Paired timing runs per trial.")
@click.option("--subset", default=200, show_default=True, help="Samples of the early accuracy check that rejects hopeless trials.")
@click.option("--threads", default=0, help="Intra-op threads for timing (0 = runtime default).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the chosen model here.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the HTML report (scatter of the trials, the front's recipes).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every trial, the Pareto front and the choice as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or messages.")
def tune_cmd(model, calib, data, labels, max_drop, min_fidelity, max_size_mb, drop_sigmas, targets, trials, time_budget, workers, ray_address, storage, study_name, seed, iters, subset, threads, output, report_path, json_path, quiet):
    """Find the fastest model that loses at most the budget on --data: exit 0 found, 1 none met it, 2 error."""
    from onnxopt import progress
    from onnxopt.tune.cli import run_tune_command

    progress.set_quiet(quiet)
    code = run_tune_command(
        model, calibration=calib, data=data, labels=labels, max_drop=max_drop, min_fidelity=min_fidelity,
        max_size_mb=max_size_mb, drop_sigmas=drop_sigmas, targets=tuple(t.strip() for t in targets.split(",") if t.strip()), trials=trials,
        time_budget=time_budget, workers=workers, ray=ray_address, storage=storage, study_name=study_name, seed=seed,
        profile_iters=iters, subset=subset, threads=threads, output=output, report=report_path, json_path=json_path,
        log=_log(quiet), echo=click.echo,
    )
    sys.exit(code)


@main.command("passes")
@click.option("--json", "as_json", is_flag=True)
def passes_cmd(as_json):
    """List every registered pass with its options."""
    from onnxopt.pipeline import config_options, registered_passes

    rows = []
    for name, cls in registered_passes().items():
        rows.append(
            {
                "name": name,
                "exact": cls.exact,
                "description": cls.description or ((cls.__doc__ or "").strip().splitlines() or [""])[0],
                "options": [{"name": n, "type": t, "default": d, "help": h} for n, t, d, h in config_options(cls.Config)],
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        kind = "exact" if row["exact"] else "lossy"
        click.echo(f"{row['name']} ({kind}): {row['description']}")
        for opt in row["options"]:
            click.echo(f"    {opt['name']} = {opt['default']!r} ({opt['type']}) {opt['help']}")


@main.command("targets")
@click.option("--recipe", "recipes", multiple=True, type=click.Path(dir_okay=False), help="Also list this recipe file (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def targets_cmd(recipes, as_json):
    """List the built-in targets and any --recipe files: backend, precision, capabilities, availability."""
    from dataclasses import asdict

    from onnxopt.backends import backend_availability
    from onnxopt.targets import list_targets

    rows = []
    for target in list_targets(list(recipes)):
        missing = backend_availability(target.backend)
        rows.append({**asdict(target), "available": missing is None, "unavailable_because": missing})
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        caps = row["capabilities"]
        state = "" if row["available"] else f" · engine unavailable here: {row['unavailable_because']}"
        click.echo(
            f"{row['name']:<10} {row['backend']}/{row['precision']} · contrib_ops={str(caps['contrib_ops']).lower()} "
            f"qdq_rules={caps['qdq_rules']}{state}\n           {row['description']}"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
