"""The `onnxopt` command line: a thin layer over onnxopt.api.

Every failure a user can cause ends in one line on stderr and exit code 2, never a traceback
(ONNXOPT_DEBUG=1 shows it for bug reports).
"""

from __future__ import annotations

import json
import os
import sys

import click

from onnxopt import __version__
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
    help="Concrete shape for an input with dynamic dims (repeatable).",
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
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the compile report as JSON.")
@click.option("--recipe", type=click.Path(dir_okay=False), help="A TOML recipe that replaces the target's.")
@click.option("--set", "overrides", multiple=True, metavar="PASS.KEY=VALUE", help="Override one pass option (repeatable).")
@click.option("--calib", "calib", metavar="PATH", help="Calibration data: a folder of .npz/.npy files, or one .npz/.npy of N samples ('random' only for smoke tests).")
@click.option("--calib-limit", type=int, default=None, help="Use at most this many calibration samples.")
@click.option("--prune", type=float, default=None, metavar="RATIO", help="Add structured channel pruning: remove this fraction of channels (needs --calib).")
@click.option("--prune-flops", type=float, default=None, metavar="X", help="Add channel pruning until at most X of the model's MACs remain.")
@click.option("--depthwise", is_flag=True, help="Add depthwise-separable substitution of KxK convolutions.")
@click.option("--depthwise-error", type=float, default=None, metavar="X", help="Per-layer relative output error cap for --depthwise.")
@click.option("--depthwise-flops", type=float, default=None, metavar="X", help="Substitute until at most X of the model's MACs remain.")
@click.option("--max-drop", type=float, default=None, metavar="X", help="Accuracy budget for lossy passes (fidelity drop against the original).")
@click.option("--emit", type=click.Choice(["auto", "onnx"]), default="auto", show_default=True, help="onnx: write the optimized ONNX only, build and profile no runtime artifact.")
@input_shape_option
@click.option("--verify", type=click.Choice(["end", "each", "off"]), default=None, help="Numeric check: end to end (default), after every pass, or off.")
@click.option("--no-profile", is_flag=True, help="Skip the latency comparison.")
@click.option("--iters", default=50, show_default=True, help="Paired timing runs for the latency comparison.")
@click.option("--op-breakdown", is_flag=True, help="Add a per-operator time breakdown from ORT's profiler.")
@click.option("--threads", default=0, help="Intra-op threads for profiling (0 = runtime default).")
@click.option("--seed", default=0, show_default=True, help="Seed for generated inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def compile_cmd(model, target, output, report_path, recipe, overrides, calib, calib_limit, prune, prune_flops, depthwise, depthwise_error, depthwise_flops, max_drop, emit, input_shapes, verify, no_profile, iters, op_breakdown, threads, seed, as_json, quiet):
    """Optimize MODEL for a target and write the optimized model."""
    from onnxopt.api import compile as run_compile
    from onnxopt.inputs import parse_input_shapes

    result = run_compile(
        model,
        target=target,
        calibration=calib,
        calibration_limit=calib_limit,
        extra_passes=_structural_passes(prune, prune_flops, depthwise, depthwise_error, depthwise_flops),
        options={"max_drop": max_drop} if max_drop is not None else {},
        emit=emit,
        output=output,
        recipe=recipe,
        overrides=overrides,
        input_shapes=parse_input_shapes(input_shapes),
        verify=verify,
        profile=not no_profile,
        profile_iters=iters,
        op_breakdown=op_breakdown,
        threads=threads,
        seed=seed,
        report=report_path,
        log=_log(quiet),
    )
    click.echo(result.report.to_json() if as_json else result.report.summary())


def _structural_passes(prune, prune_flops, depthwise, depthwise_error, depthwise_flops) -> list[dict]:
    """Flags that add lossy structural passes to any target: substitute first, then prune."""
    entries = []
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
def targets_cmd():
    """List the targets and whether each is available in this version."""
    from onnxopt.recipes import ALL_TARGETS, available_targets, load_target

    ready = set(available_targets())
    for target in ALL_TARGETS:
        if target in ready:
            click.echo(f"{target:<10} {load_target(target).get('description', '')}")
        else:
            click.echo(f"{target:<10} (not available yet)")


if __name__ == "__main__":  # pragma: no cover
    main()
