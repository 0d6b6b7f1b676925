"""CompileReport as Markdown for a pull-request comment: the verdict and the headline numbers up
front, the details folded (GitHub and GitLab render <details>)."""

from __future__ import annotations

from typing import Any

from onnxopt.report import CompileReport, pass_counts, register_renderer
from onnxopt.report_html import num


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]], align: str | None = None) -> list[str]:
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _with_unit(value: float, unit: str) -> str:
    text = f"{value:.4g}"
    return f"{text}×" if unit == "x" else f"{text} {unit}".strip()


def _relative(before: Any, after: Any) -> str:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or not before:
        return ""
    return f"{(after - before) / before * 100:+.1f}%"


def render_markdown(report: CompileReport) -> str:
    b, a = report.before, report.after
    gate = report.gate
    verdict = ""
    if gate:
        verdict = " · ✅ gate passed" if gate["passed"] else f" · ❌ gate failed ({', '.join(gate['failed'])})"
    lines = [f"### onnxopt · `{report.source or 'model'}` → `{report.target}`{verdict}", ""]

    rows: list[list[Any]] = []
    lat = report.latency
    if lat:
        low, high = lat["ci95"]
        rows.append(
            ["latency p50", f"{lat['baseline']['p50_ms']:.3f} ms", f"{lat['candidate']['p50_ms']:.3f} ms", f"**{lat['speedup']:.2f}×** (95% CI {low:.2f}–{high:.2f}, {lat['pairs']} pairs)"]
        )
    if isinstance(b.get("size_bytes"), (int, float)):
        rows.append(["size", f"{b['size_bytes'] / 1e6:.2f} MB", f"{a['size_bytes'] / 1e6:.2f} MB", _relative(b["size_bytes"], a["size_bytes"])])
    rows.append(["nodes", num(b.get("nodes")), num(a.get("nodes")), _relative(b.get("nodes"), a.get("nodes"))])
    if b.get("macs"):
        rows.append(["MACs", f"{b['macs'] / 1e9:.3f} G", f"{a['macs'] / 1e9:.3f} G", _relative(b["macs"], a["macs"])])
    ev = report.evaluation
    if ev:
        acc = ev.get("accuracy")
        if acc:
            rows.append(["top-1 accuracy", f"{acc['original']['top1'] * 100:.2f}%", f"{acc['optimized']['top1'] * 100:.2f}%", f"{-acc['drop_top1_pts'] + 0.0:+.2f} pts"])
            if acc["original"].get("top5") is not None:
                rows.append(["top-5 accuracy", f"{acc['original']['top5'] * 100:.2f}%", f"{acc['optimized']['top5'] * 100:.2f}%", f"{-acc['drop_top5_pts'] + 0.0:+.2f} pts"])
        rows.append(["fidelity (cosine)", "1", f"{ev['fidelity']:.6f}", f"{ev['samples']} samples"])
    lines += _table(["", "original", "optimized", "change"], rows, "lrrl")

    if gate:
        lines += ["", "**Gate**", ""]
        gate_rows = []
        for c in gate["checks"]:
            mark = "✅" if c["passed"] else "❌"
            if c["passed"] and c.get("decision") == "inconclusive":
                mark = "⚠️"
            measured = "–" if c["measured"] is None else _with_unit(c["measured"], c["unit"])
            gate_rows.append([mark, f"`{c['name']}`", f"{c['op']} {_with_unit(c['threshold'], c['unit'])}", measured, c.get("detail", "")])
        lines += _table(["", "threshold", "needs", "measured", "how"], gate_rows, "lllrl")

    v = report.verification
    if v and v.get("mode") not in (None, "off"):
        if v.get("skipped"):
            lines += ["", f"Verification skipped: {v['skipped']}"]
        else:
            lines += ["", f"Verification ({v['mode']}, random inputs): {'ok' if v.get('ok') else '**differs**'}, max relative error {v.get('max_rel_error', 0):.2e}"]

    if report.passes:
        lines += ["", f"<details><summary>Passes: {pass_counts(report.passes)}, {sum(p.seconds for p in report.passes):.2f} s</summary>", ""]
        lines += _table(
            ["pass", "kind", "time", "nodes", "changed"],
            [[f"`{p.name}`", "exact" if p.exact else "lossy", f"{p.seconds * 1e3:.1f} ms", f"{p.nodes_before} → {p.nodes_after}", "yes" if p.changed else ""] for p in report.passes],
            "llrrl",
        )
        lines += ["", "</details>"]

    lines += _engine_lines(report)

    if report.op_breakdown:
        before = {r["op_type"]: r for r in report.op_breakdown.get("original", [])}
        after = {r["op_type"]: r for r in report.op_breakdown.get("optimized", [])}
        ops = sorted(set(before) | set(after), key=lambda op: -max(before.get(op, {}).get("ms_per_run", 0), after.get(op, {}).get("ms_per_run", 0)))[:10]
        lines += ["", "<details><summary>Time per operator type (top 10)</summary>", ""]
        lines += _table(
            ["op", "original ms", "optimized ms"],
            [[op, num(before.get(op, {}).get("ms_per_run")), num(after.get(op, {}).get("ms_per_run"))] for op in ops],
            "lrr",
        )
        lines += ["", "</details>"]

    if ev and ev.get("outputs"):
        lines += ["", "<details><summary>Fidelity per output</summary>", ""]
        out_rows = []
        for name, d in ev["outputs"].items():
            out_rows.append([f"`{name}`", num(d.get("cosine"), 6), num(d.get("max_abs")), num(d.get("mean_abs")), f"{d['top1_agreement'] * 100:.2f}%" if d.get("top1_agreement") is not None else "–"])
        lines += _table(["output", "cosine", "max abs", "mean abs", "top-1 agreement"], out_rows, "lrrrr")
        lines += ["", "</details>"]

    for key, value in report.artifacts.items():
        lines += ["", f"<details><summary>{key}</summary>", ""]
        lines += _artifact(value)
        lines += ["", "</details>"]

    if report.warnings:
        lines += [""] + [f"> ⚠️ {w}" for w in report.warnings]
    lines += ["", f"<sub>onnxopt {report.version}</sub>", ""]
    return "\n".join(lines)


def _engine_lines(report: CompileReport) -> list[str]:
    """The backend's part: TensorRT readiness findings, and the engine when one was built."""
    lines: list[str] = []
    check = report.trt_check
    if check is not None:
        findings = check.get("findings", [])
        state = "clean" if not findings else f"{check.get('errors', 0)} error(s), {check.get('warnings', 0)} warning(s)"
        lines += ["", f"TensorRT readiness: {state}"]
        if findings:
            lines += [""] + _table(["severity", "code", "node", "message"], [[f.get("severity"), f.get("code"), f.get("node") or "", f.get("message")] for f in findings])
    engine = report.engine
    if not engine:
        return lines
    rows = [["engine", f"`{engine.get('path') or '(in memory)'}`"], ["size", f"{engine.get('bytes', 0) / 1e6:.2f} MB"], ["precision", engine.get("precision")],
            ["built in", f"{num(engine.get('build_seconds'))} s on {engine.get('device', '?')} (TensorRT {engine.get('tensorrt_version', '?')})"]]
    lat = engine.get("latency")
    if lat:
        rows.append(["latency", f"p50 {num(lat.get('p50_ms'))} ms · p90 {num(lat.get('p90_ms'))} ms · p99 {num(lat.get('p99_ms'))} ms · {num(lat.get('throughput'), 1)} samples/s"])
    fid = engine.get("fidelity")
    if fid:
        rows.append(["vs onnxruntime", f"min cosine {num(fid.get('min_cosine'), 6)}, max relative error {num(fid.get('max_rel_error'))}"])
    summary = engine.get("layer_summary") or {}
    if summary:
        rows.append(["layers", f"{summary.get('engine_layers')} from {summary.get('onnx_nodes')} ONNX nodes ({summary.get('fused_layers')} fused)"])
    lines += ["", "**Engine**", ""] + _table(["", ""], rows)
    timed = [r for r in engine.get("layers", []) if "ms_per_run" in r][:10]
    if timed:
        lines += ["", "<details><summary>Slowest engine layers</summary>", ""]
        lines += _table(["layer", "type", "precision", "ms/run", "share"],
                        [[f"`{r['name']}`", r.get("type") or "", r.get("precision") or "", num(r["ms_per_run"], 4), f"{r.get('share', 0) * 100:.1f}%"] for r in timed], "lllrr")
        lines += ["", "</details>"]
    return lines


def _artifact(value: Any) -> list[str]:
    """Records as a table (first 30 rows), a flat mapping as key/value rows, anything else as JSON."""
    import json

    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        value = [{"name": k, **v} for k, v in value.items()]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns: list[str] = []
        for record in value:
            columns += [k for k in record if k not in columns]
        rows = [[num(r.get(c), 4) if not isinstance(r.get(c), (dict, list)) else json.dumps(r.get(c)) for c in columns] for r in value[:30]]
        more = ["", f"{len(value) - 30} more rows in the JSON report."] if len(value) > 30 else []
        return _table(columns, rows) + more
    if isinstance(value, dict):
        return _table(["key", "value"], [[k, num(v, 4) if not isinstance(v, (dict, list)) else json.dumps(v, default=str)] for k, v in value.items()])
    return ["```", json.dumps(value, indent=1, default=str)[:3000], "```"]


register_renderer((".md", ".markdown"), render_markdown)
