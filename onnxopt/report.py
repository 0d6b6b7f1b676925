"""CompileReport: what the compile did, how the model changed, how latency moved. JSON and text.

`save` picks the format by the file's suffix from RENDERERS: the rendering modules register
themselves there (.html: report_html, one self-contained page with charts; .md: report_md, a
pull-request comment); anything else is JSON. The renderers import this module, never the
reverse; `onnxopt` imports them when it is imported, so every suffix is known.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxopt.ir import write_bytes_atomic
from onnxopt.pipeline import PassRecord

# suffix -> function rendering a report as text; filled by the rendering modules on import
RENDERERS: dict[str, Callable[[CompileReport], str]] = {}


def register_renderer(suffixes: tuple[str, ...], render: Callable[[CompileReport], str]) -> None:
    for suffix in suffixes:
        RENDERERS[suffix] = render


@dataclass
class CompileReport:
    target: str
    source: str | None
    output: str | None
    before: dict[str, Any]
    after: dict[str, Any]
    passes: list[PassRecord] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] | None = None
    op_breakdown: dict[str, list[dict[str, Any]]] | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    version: str = ""
    trt_check: dict[str, Any] | None = None  # TensorRT readiness findings (trt-* targets)
    engine: dict[str, Any] | None = None  # the TensorRT engine: path, build, latency, layers
    evaluation: dict[str, Any] | None = None  # onnxopt.evaluation.EvaluationResult.to_dict() on real data
    gate: dict[str, Any] | None = None  # thresholds and verdicts when the report comes from `onnxopt gate`

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passes"] = [asdict(p) for p in self.passes]
        return _jsonable(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def summary(self) -> str:
        """A few lines for a terminal."""
        b, a = self.before, self.after
        lines = [f"onnxopt {self.version} · target {self.target}"]
        if self.output:
            lines.append(f"wrote {self.output}")
        lines.append(
            f"nodes {b.get('nodes')} -> {a.get('nodes')} · size {_mb(b.get('size_bytes'))} -> {_mb(a.get('size_bytes'))}"
            + (f" · MACs {_giga(b.get('macs'))} -> {_giga(a.get('macs'))}" if b.get("macs") else "")
        )
        changed = [p for p in self.passes if p.changed]
        lines.append(f"passes: {pass_counts(self.passes)}, {sum(p.seconds for p in self.passes):.2f}s")
        for p in changed:
            lines.append(f"  {p.name:<24} {p.nodes_before:>6} -> {p.nodes_after:<6} {p.seconds:6.2f}s")
        v = self.verification
        if v:
            if v.get("skipped"):
                lines.append(f"verification: skipped ({v['skipped']})")
            else:
                lines.append(_verification_line(v))
        if self.latency:
            lat = self.latency
            lines.append(
                f"latency p50 {lat['baseline']['p50_ms']:.3f} ms -> {lat['candidate']['p50_ms']:.3f} ms · "
                f"speedup {lat['speedup']:.2f}x (95% CI {lat['ci95'][0]:.2f}-{lat['ci95'][1]:.2f}, {lat['pairs']} paired runs)"
            )
        lines.extend(self._tensorrt_lines())
        if self.evaluation:
            lines.append(f"fidelity on {self.evaluation['samples']} samples: cosine {self.evaluation['fidelity']:.6f}")
            acc = self.evaluation.get("accuracy")
            if acc:
                lines.append(
                    f"accuracy top-1 {acc['original']['top1'] * 100:.2f}% -> {acc['optimized']['top1'] * 100:.2f}% ({abs(acc['drop_top1_pts']):.2f} pts {'lost' if acc['drop_top1_pts'] > 0 else 'gained'})"
                )
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines)

    def _tensorrt_lines(self) -> list[str]:
        lines = []
        if self.trt_check is not None:
            check = self.trt_check
            state = "clean" if not check["findings"] else f"{check['errors']} error(s), {check['warnings']} warning(s)"
            lines.append(f"TensorRT check: {state}")
        engine = self.engine
        if engine:
            lines.append(
                f"engine {engine.get('path') or '(in memory)'} · {engine['bytes'] / 1e6:.2f} MB · {engine['precision']} · "
                f"built in {engine['build_seconds']:.1f}s on {engine.get('device', '?')} (TensorRT {engine.get('tensorrt_version')})"
            )
            lat = engine.get("latency")
            if lat:
                lines.append(
                    f"engine latency p50 {lat['p50_ms']:.3f} ms · p90 {lat['p90_ms']:.3f} ms · p99 {lat['p99_ms']:.3f} ms · "
                    f"{lat['throughput']:.1f} samples/s (CUDA events, {lat['iterations']} runs)"
                )
            if engine.get("fidelity"):
                fid = engine["fidelity"]
                lines.append(f"engine vs onnxruntime: min cosine {fid['min_cosine']:.6f}, max relative error {fid['max_rel_error']:.2e}")
            summary = engine.get("layer_summary", {})
            if summary:
                lines.append(
                    f"engine layers {summary['engine_layers']} from {summary['onnx_nodes']} ONNX nodes ({summary['fused_layers']} fused) · "
                    + ", ".join(f"{k} {v}" for k, v in summary["by_precision"].items())
                )
            for row in engine.get("layers", [])[:5]:
                if "ms_per_run" in row:
                    lines.append(f"  {row['name'][:60]:<60} {row['ms_per_run']:8.4f} ms {row['share'] * 100:5.1f}% {row.get('precision') or ''}")
        return lines

    def save(self, path: str | os.PathLike) -> Path:
        render = RENDERERS.get(Path(path).suffix.lower())
        return write_text_atomic(path, render(self) if render is not None else self.to_json() + "\n")


def pass_counts(passes: list[PassRecord]) -> str:
    """'11 run, 2 skipped, 3 changed the graph': passes a recipe's only_if_ops skipped are not 'run'."""
    skipped = sum(1 for p in passes if p.stats.get("skipped"))
    changed = sum(1 for p in passes if p.changed)
    return f"{len(passes) - skipped} run, " + (f"{skipped} skipped, " if skipped else "") + f"{changed} changed the graph"


def _verification_line(v: dict[str, Any]) -> str:
    """Exact pipelines must match; after lossy passes the random-input drift is information, not failure."""
    error = f"max relative error {v.get('max_rel_error', 0):.2e}"
    if v.get("exact", True):
        return f"verification ({v.get('mode')}): {'ok' if v.get('ok') else 'FAILED'}, {error}"
    cosine = f", cosine {v['min_cosine']:.6f}" if "min_cosine" in v else ""
    return f"drift on random inputs (lossy passes ran; judge them on real data with --data): {error}{cosine}"


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def _mb(value: Any) -> str:
    return f"{value / 1e6:.2f} MB" if isinstance(value, (int, float)) else "?"


def _giga(value: Any) -> str:
    return f"{value / 1e9:.3f}G" if isinstance(value, (int, float)) else "?"


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    return value
