"""CompileReport as one self-contained HTML page: inline CSS, inline SVG charts, no scripts, no network.

The page answers, top to bottom: did the gate pass, how much faster/smaller/less accurate did
the model get (cards), latency before/after (chart with the speedup's confidence interval),
where the time goes per operator, accuracy and fidelity on real data, what every pass did, and
whatever the lossy passes left in `artifacts` (layers kept in float with their sensitivity,
pruning decisions, ...) as generic tables with data bars.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable
from typing import Any

from onnxopt.report import CompileReport, pass_counts, register_renderer

ORIGINAL = "#94a3b8"
OPTIMIZED = "#4f46e5"
GOOD = "#059669"
BAD = "#dc2626"
WARN = "#d97706"
MAX_TABLE_ROWS = 200
CHANGED_BADGE = '<span class="badge pass">changed</span>'

CSS = """
:root { --fg:#0f172a; --muted:#64748b; --line:#e2e8f0; --bg:#f8fafc; --card:#ffffff; --accent:#4f46e5;
        --good:#059669; --bad:#dc2626; --warn:#d97706; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 48px; }
header h1 { font-size: 22px; margin: 0 0 2px; }
header .sub { color: var(--muted); }
h2 { font-size: 17px; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 6px; color: #334155; }
.banner { margin: 18px 0 6px; padding: 12px 16px; border-radius: 10px; font-weight: 600; font-size: 16px; color: #fff; }
.banner.pass { background: var(--good); } .banner.fail { background: var(--bad); }
.banner small { font-weight: 400; opacity: .9; margin-left: 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px; margin-top: 18px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 24px; font-weight: 700; margin: 2px 0; }
.card .detail { color: var(--muted); font-size: 12px; }
.good { color: var(--good); } .bad { color: var(--bad); } .warn { color: var(--warn); }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; margin: 10px 0; overflow-x: auto; }
.row { display: flex; gap: 16px; flex-wrap: wrap; } .row > .panel { flex: 1 1 420px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; background: #f1f5f9; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.dim td { color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 11px; font-weight: 600; color: #fff; }
.badge.pass { background: var(--good); } .badge.fail { background: var(--bad); } .badge.info { background: #64748b; }
.badge.warn { background: var(--warn); } .badge.lossy { background: var(--warn); } .badge.exact { background: #0891b2; }
.legend { display: flex; gap: 14px; font-size: 12px; color: var(--muted); margin-bottom: 4px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.note { color: var(--muted); font-size: 12px; margin: 6px 0 0; }
.stats { color: var(--muted); font-size: 12px; }
ul.warnings { margin: 0; padding-left: 18px; } ul.warnings li { color: #92400e; }
pre { background: #f1f5f9; padding: 8px; border-radius: 6px; overflow-x: auto; font-size: 12px; }
svg text { font-family: inherit; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 10 ** -(digits) or abs(value) >= 1e6):
            return f"{value:.{digits}g}"
        return f"{value:,.{digits}f}"
    return str(value)


def _mb(value: Any) -> str:
    return f"{value / 1e6:.2f} MB" if isinstance(value, (int, float)) else "–"


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def _text_width(text: str, size: float = 12) -> float:
    return len(text) * size * 0.62


# --- SVG charts ---------------------------------------------------------------------------------


def nice_max(value: float) -> float:
    """A round axis end at or above `value` (1, 2, 2.5, 5 x 10^k)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * 10**exp >= value:
            return step * 10**exp
    return 10 ** (exp + 1)


def bar_chart(
    rows: list[tuple[str, list[float | None]]],
    series: list[tuple[str, str]],
    *,
    unit: str = "",
    title: str = "",
    width: int = 520,
    digits: int = 3,
) -> str:
    """Grouped horizontal bars: one group per row, one bar per series, values written at the bar end."""
    if not rows:
        return ""
    label_w = min(max(_text_width(label) for label, _ in rows) + 18, 230)
    value_w = 78
    bar_h, gap = 14, 10
    group_h = bar_h * len(series) + gap
    top = 22 if title else 6
    height = top + group_h * len(rows) + 22
    plot_w = width - label_w - value_w
    peak = nice_max(max((v for _, vals in rows for v in vals if v is not None), default=1.0))
    parts = [f'<svg class="chart" role="img" aria-label="{esc(title or "bar chart")}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" style="width:100%;max-width:{width}px;height:auto">']
    if title:
        parts.append(f'<text x="0" y="14" font-size="13" font-weight="600" fill="#334155">{esc(title)}</text>')
    for tick in range(5):
        x = label_w + plot_w * tick / 4
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 18}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 4}" font-size="10" fill="#64748b" text-anchor="middle">{esc(num(peak * tick / 4, 2))}{esc(unit)}</text>')
    for i, (label, values) in enumerate(rows):
        y0 = top + i * group_h
        shown = label if len(label) <= 34 else label[:32] + "…"
        parts.append(f'<text x="{label_w - 8:.1f}" y="{y0 + group_h / 2:.1f}" font-size="12" fill="#0f172a" text-anchor="end" dominant-baseline="middle">{esc(shown)}<title>{esc(label)}</title></text>')
        for j, ((name, color), value) in enumerate(zip(series, values)):
            y = y0 + j * bar_h
            if value is None:
                continue
            w = max(plot_w * value / peak, 1.0)
            parts.append(f'<rect x="{label_w:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 2}" rx="2" fill="{color}"><title>{esc(name)}: {esc(num(value, digits))}{esc(unit)}</title></rect>')
            parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h / 2:.1f}" font-size="11" fill="#334155" dominant-baseline="middle">{esc(num(value, digits))}{esc(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def interval_chart(value: float, low: float, high: float, *, reference: float = 1.0, threshold: float | None = None, unit: str = "x", width: int = 520, title: str = "") -> str:
    """A point estimate with its confidence interval on an axis, a dashed line at `reference` (no
    change) and a red one at the gate's threshold."""
    marks = [value, low, high, reference] + ([threshold] if threshold is not None else [])
    lo, hi = min(marks), max(marks)
    pad = max((hi - lo) * 0.25, abs(hi) * 0.05, 0.02)
    lo, hi = lo - pad, hi + pad
    height, left, right = 100, 24, 28
    axis_y = 68

    def x(v: float) -> float:
        return left + (width - left - right) * (v - lo) / (hi - lo)

    parts = [f'<svg class="chart" role="img" aria-label="{esc(title or "interval")}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" style="width:100%;max-width:{width}px;height:auto">']
    if title:
        parts.append(f'<text x="0" y="14" font-size="13" font-weight="600" fill="#334155">{esc(title)}</text>')
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="#cbd5e1"/>')
    for tick in range(6):
        v = lo + (hi - lo) * tick / 5
        parts.append(f'<line x1="{x(v):.1f}" y1="{axis_y}" x2="{x(v):.1f}" y2="{axis_y + 4}" stroke="#94a3b8"/>')
        parts.append(f'<text x="{x(v):.1f}" y="{axis_y + 16}" font-size="10" fill="#64748b" text-anchor="middle">{v:.2f}{esc(unit)}</text>')
    parts.append(f'<line x1="{x(reference):.1f}" y1="30" x2="{x(reference):.1f}" y2="{axis_y}" stroke="#64748b" stroke-dasharray="3,3"/>')
    parts.append(f'<text x="{x(reference):.1f}" y="{axis_y + 28}" font-size="10" fill="#64748b" text-anchor="middle">no change</text>')
    if threshold is not None:
        parts.append(f'<line x1="{x(threshold):.1f}" y1="30" x2="{x(threshold):.1f}" y2="{axis_y}" stroke="{BAD}" stroke-width="2"/>')
        parts.append(f'<text x="{x(threshold):.1f}" y="{axis_y - 40}" font-size="10" fill="{BAD}" text-anchor="middle">gate {threshold:g}{esc(unit)}</text>')
    color = GOOD if low > reference else BAD if high < reference else WARN
    parts.append(f'<rect x="{x(low):.1f}" y="{axis_y - 22}" width="{max(x(high) - x(low), 2):.1f}" height="14" rx="7" fill="{color}" opacity="0.25"/>')
    parts.append(f'<line x1="{x(low):.1f}" y1="{axis_y - 15}" x2="{x(high):.1f}" y2="{axis_y - 15}" stroke="{color}" stroke-width="2"/>')
    parts.append(f'<circle cx="{x(value):.1f}" cy="{axis_y - 15}" r="6" fill="{color}"><title>{value:.3f}{esc(unit)} (95% CI {low:.3f}-{high:.3f})</title></circle>')
    label = f"{value:.2f}{unit}  [{low:.2f}, {high:.2f}]"
    anchor = "start" if x(value) < width / 2 else "end"
    offset = 10 if anchor == "start" else -10
    parts.append(f'<text x="{x(value) + offset:.1f}" y="{axis_y - 28}" font-size="12" font-weight="600" fill="{color}" text-anchor="{anchor}">{esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def step_chart(points: list[tuple[str, int]], *, width: int = 520, title: str = "") -> str:
    """Node count after each pass, as a line with a dot per pass (hover names the pass)."""
    if len(points) < 2:
        return ""
    height, left, right, top, bottom = 150, 44, 12, 24, 24
    values = [v for _, v in points]
    lo, hi = min(values), max(values)
    span = max(hi - lo, 2)
    lo, hi = max(lo - span * 0.2, 0), hi + span * 0.2

    def x(i: int) -> float:
        return left + (width - left - right) * i / (len(points) - 1)

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg class="chart" role="img" aria-label="{esc(title or "nodes per pass")}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" style="width:100%;max-width:{width}px;height:auto">']
    if title:
        parts.append(f'<text x="0" y="14" font-size="13" font-weight="600" fill="#334155">{esc(title)}</text>')
    for v in sorted({round(lo + (hi - lo) * tick / 3) for tick in range(4)}):
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{width - right}" y2="{y(v):.1f}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v):.1f}" font-size="10" fill="#64748b" text-anchor="end" dominant-baseline="middle">{v:.0f}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for i, (_, v) in enumerate(points))
    area = path + f" L{x(len(points) - 1):.1f},{y(lo):.1f} L{x(0):.1f},{y(lo):.1f} Z"
    parts.append(f'<path d="{area}" fill="{OPTIMIZED}" opacity="0.08"/>')
    parts.append(f'<path d="{path}" fill="none" stroke="{OPTIMIZED}" stroke-width="2"/>')
    for i, (name, v) in enumerate(points):
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{OPTIMIZED}"><title>{esc(name)}: {v} nodes</title></circle>')
    parts.append(f'<text x="{x(0):.1f}" y="{height - 6}" font-size="10" fill="#64748b">{esc(points[0][0])}</text>')
    parts.append(f'<text x="{x(len(points) - 1):.1f}" y="{height - 6}" font-size="10" fill="#64748b" text-anchor="end">{esc(points[-1][0])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def legend(series: list[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(f'<span><i style="background:{c}"></i>{esc(n)}</span>' for n, c in series) + "</div>"


# --- generic tables ------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return esc(text if len(text) <= 120 else text[:117] + "...")
    return esc(num(value, 4) if isinstance(value, float) else num(value))


def record_table(records: list[dict[str, Any]], *, key_name: str | None = None) -> str:
    """Rows of dicts as a table; numeric columns get data bars scaled to the column's largest value."""
    columns: list[str] = []
    for record in records:
        for key in record:
            if key not in columns:
                columns.append(key)
    numeric = {c for c in columns if all(_is_number(r.get(c)) or r.get(c) is None for r in records) and any(_is_number(r.get(c)) for r in records)}
    peaks = {c: max((abs(r[c]) for r in records if _is_number(r.get(c))), default=0) for c in numeric}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{esc(c)}</th>' for c in columns)
    body = []
    for record in records[:MAX_TABLE_ROWS]:
        cells = []
        for c in columns:
            value = record.get(c)
            if c in numeric and _is_number(value) and peaks[c] > 0:
                share = abs(value) / peaks[c] * 100
                style = f"background: linear-gradient(to left, rgba(79,70,229,.16) {share:.1f}%, transparent {share:.1f}%)"
                cells.append(f'<td class="num" style="{style}">{_cell(value)}</td>')
            else:
                cells.append(f'<td class="{"num" if c in numeric else ""}">{_cell(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">{len(records) - MAX_TABLE_ROWS} more rows not shown (see the JSON report).</p>' if len(records) > MAX_TABLE_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _sensitivity_column(records: list[dict[str, Any]]) -> str | None:
    for record in records[:1]:
        for key in record:
            if "sensitiv" in key.lower() and all(_is_number(r.get(key)) for r in records):
                return key
    return None


def _label_column(records: list[dict[str, Any]]) -> str | None:
    for key in ("name", "layer", "node", "tensor", "op"):
        if all(isinstance(r.get(key), str) for r in records):
            return key
    return None


def render_value(value: Any, depth: int = 0) -> str:
    """Any JSON-like artifact as HTML: records -> table (+ sensitivity chart), mapping -> table, else text."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = record_table(value)
        column, label = _sensitivity_column(value), _label_column(value)
        if column and label:
            top = sorted(value, key=lambda r: -abs(r[column]))[:20]
            out = bar_chart([(r[label], [r[column]]) for r in top], [(column, WARN)], title=f"{column} (top {len(top)})", width=640, digits=4) + out
        return out
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()) and depth < 2:
        flat = all(not isinstance(x, (dict, list)) or len(json.dumps(x, default=str)) < 120 for v in value.values() for x in v.values())
        if flat:
            return render_value([{"name": k, **v} for k, v in value.items()], depth + 1)
    if isinstance(value, dict) and value:
        rows = []
        for k, v in list(value.items())[:MAX_TABLE_ROWS]:
            inner = render_value(v, depth + 1) if isinstance(v, (dict, list)) and depth < 2 else _cell(v)
            rows.append(f'<tr><th style="width:30%">{esc(k)}</th><td>{inner}</td></tr>')
        return f"<table><tbody>{''.join(rows)}</tbody></table>"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return esc(", ".join(num(v) for v in value[:MAX_TABLE_ROWS])) or "<em>empty</em>"
        return f"<pre>{esc(json.dumps(value, indent=1, default=str)[:4000])}</pre>"
    return esc(num(value, 4) if isinstance(value, float) else value)


# --- sections ------------------------------------------------------------------------------------


def _card(label: str, value: str, detail: str = "", tone: str = "") -> str:
    return f'<div class="card"><div class="label">{esc(label)}</div><div class="value {tone}">{value}</div><div class="detail">{detail}</div></div>'


def _change(before: Any, after: Any, *, lower_is_better: bool = True) -> tuple[str, str]:
    if not (_is_number(before) and _is_number(after)) or before == 0:
        return "", ""
    rel = (after - before) / before
    tone = "" if abs(rel) < 0.01 else ("good" if (rel < 0) == lower_is_better else "bad")
    return f"{rel * 100:+.1f}%", tone


def _with_unit(value: float, unit: str) -> str:
    text = f"{value:.4g}"
    return f"{text}×" if unit == "x" else f"{text} {unit}".strip()


def _gate_threshold(report: CompileReport, name: str) -> float | None:
    for check in (report.gate or {}).get("checks", []):
        if check["name"] == name:
            return check["threshold"]
    return None


def _cards(report: CompileReport) -> str:
    b, a = report.before, report.after
    cards = []
    lat = report.latency
    if lat:
        low, high = lat["ci95"]
        tone = "good" if low > 1 else "bad" if high < 1 else "warn"
        cards.append(_card("Speedup", f"{lat['speedup']:.2f}×", f"95% CI {low:.2f}–{high:.2f} · {lat['pairs']} paired runs", tone))
        cards.append(_card("Latency p50", f"{lat['candidate']['p50_ms']:.3f} ms", f"was {lat['baseline']['p50_ms']:.3f} ms"))
    rel, tone = _change(b.get("size_bytes"), a.get("size_bytes"))
    cards.append(_card("Size", _mb(a.get("size_bytes")), f"was {_mb(b.get('size_bytes'))} {rel}", tone))
    rel, tone = _change(b.get("nodes"), a.get("nodes"))
    cards.append(_card("Nodes", esc(num(a.get("nodes"))), f"was {esc(num(b.get('nodes')))} {rel}", tone))
    if _is_number(b.get("macs")) and b.get("macs"):
        rel, tone = _change(b.get("macs"), a.get("macs"))
        cards.append(_card("MACs", f"{a['macs'] / 1e9:.3f} G", f"was {b['macs'] / 1e9:.3f} G {rel}", tone))
    ev = report.evaluation
    if ev:
        acc = ev.get("accuracy")
        if acc:
            drop = acc["drop_top1_pts"]
            tone = "good" if drop <= 0 else "warn" if drop < 1 else "bad"
            cards.append(_card("Top-1 accuracy", _pct(acc["optimized"]["top1"]), f"was {_pct(acc['original']['top1'])} · drop {drop:+.2f} pts", tone))
        tone = "good" if ev["fidelity"] >= 0.999 else "warn" if ev["fidelity"] >= 0.99 else "bad"
        cards.append(_card("Fidelity", f"{ev['fidelity']:.5f}", f"worst output's mean cosine · {ev['samples']} samples", tone))
    elif report.verification and "max_rel_error" in report.verification:
        v = report.verification
        cards.append(_card("Verification", "ok" if v.get("ok") else "FAILED", f"max relative error {v['max_rel_error']:.2e} ({esc(v.get('mode'))})", "good" if v.get("ok") else "bad"))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _gate_section(report: CompileReport) -> str:
    gate = report.gate
    if not gate:
        return ""
    rows = []
    for c in gate["checks"]:
        badge = f'<span class="badge {"pass" if c["passed"] else "fail"}">{"pass" if c["passed"] else "fail"}</span>'
        if c["passed"] and c.get("decision") == "inconclusive":
            badge += ' <span class="badge warn">inconclusive</span>'
        measured = "–" if c["measured"] is None else _with_unit(c["measured"], c["unit"])
        rows.append(
            f'<tr><td>{badge}</td><td><code>{esc(c["name"])}</code></td><td class="num">{esc(c["op"])} {esc(_with_unit(c["threshold"], c["unit"]))}</td>'
            f'<td class="num">{esc(measured)}</td><td class="stats">{esc(c.get("detail", ""))}</td></tr>'
        )
    table = f'<table><thead><tr><th></th><th>threshold</th><th class="num">needs</th><th class="num">measured</th><th>how</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<h2>Gate</h2><div class="panel">{table}</div>'


def _latency_section(report: CompileReport) -> str:
    lat = report.latency
    if not lat:
        return ""
    base, cand = lat["baseline"], lat["candidate"]
    rows = [(k, [base[f"{k}_ms"], cand[f"{k}_ms"]]) for k in ("p50", "p90", "p99", "mean")]
    series = [("original", ORIGINAL), ("optimized", OPTIMIZED)]
    bars = legend(series) + bar_chart(rows, series, unit=" ms", title="Latency per run (lower is better)")
    low, high = lat["ci95"]
    interval = interval_chart(lat["speedup"], low, high, threshold=_gate_threshold(report, "min_speedup"), title="Speedup: median of per-pair ratios, 95% bootstrap CI")
    note = (
        f'<p class="note">{lat["pairs"]} interleaved pairs (original and optimized alternate run by run); throughput '
        f'{base["throughput"]:.1f} → {cand["throughput"]:.1f} samples/s at batch {cand.get("batch", 1)}.</p>'
    )
    return f'<h2>Latency</h2><div class="row"><div class="panel">{bars}</div><div class="panel">{interval}{note}</div></div>'


def _engine_section(report: CompileReport) -> str:
    """What the backend built: the engine, its latency on the device, its fidelity, its layers; and readiness findings."""
    parts = []
    check = report.trt_check
    if check is not None:
        findings = check.get("findings", [])
        state = "clean" if not findings else f"{check.get('errors', 0)} error(s), {check.get('warnings', 0)} warning(s)"
        rows = [{"severity": f.get("severity"), "code": f.get("code"), "node": f.get("node"), "message": f.get("message")} for f in findings]
        parts.append(f'<div class="panel"><h3>TensorRT readiness: {esc(state)}</h3>{record_table(rows) if rows else ""}</div>')
    engine = report.engine
    if engine:
        lat = engine.get("latency") or {}
        facts = [
            ("engine", engine.get("path") or "(in memory)"),
            ("size", _mb(engine.get("bytes"))),
            ("precision", engine.get("precision")),
            ("built in", f"{num(engine.get('build_seconds'))} s on {engine.get('device', '?')} (TensorRT {engine.get('tensorrt_version', '?')})"),
        ]
        if lat:
            facts.append(("latency", f"p50 {num(lat.get('p50_ms'))} ms · p90 {num(lat.get('p90_ms'))} ms · p99 {num(lat.get('p99_ms'))} ms · {num(lat.get('throughput'), 1)} samples/s ({lat.get('iterations')} runs, CUDA events)"))
        fid = engine.get("fidelity")
        if fid:
            facts.append(("vs onnxruntime", f"min cosine {num(fid.get('min_cosine'), 6)} · max relative error {num(fid.get('max_rel_error'))}"))
        summary = engine.get("layer_summary") or {}
        if summary:
            by_precision = ", ".join(f"{k} {v}" for k, v in summary.get("by_precision", {}).items())
            facts.append(("layers", f"{summary.get('engine_layers')} from {summary.get('onnx_nodes')} ONNX nodes ({summary.get('fused_layers')} fused) · {by_precision}"))
        table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
        layers = [
            {"layer": r.get("name"), "type": r.get("type"), "precision": r.get("precision"), "ms per run": r.get("ms_per_run"), "share": r.get("share"), "fused": r.get("fused")}
            for r in engine.get("layers", [])
        ]
        parts.append(f'<div class="panel"><h3>Engine</h3><table>{table}</table>{record_table(layers) if layers else ""}</div>')
    return "<h2>Backend</h2>" + "".join(parts) if parts else ""


def _op_section(report: CompileReport) -> str:
    breakdown = report.op_breakdown
    if not breakdown:
        return ""
    before = {r["op_type"]: r for r in breakdown.get("original", [])}
    after = {r["op_type"]: r for r in breakdown.get("optimized", [])}
    ops = sorted(set(before) | set(after), key=lambda op: -max(before.get(op, {}).get("ms_per_run", 0), after.get(op, {}).get("ms_per_run", 0)))
    top = ops[:15]
    series = [("original", ORIGINAL), ("optimized", OPTIMIZED)]
    rows = [(op, [before.get(op, {}).get("ms_per_run"), after.get(op, {}).get("ms_per_run")]) for op in top]
    chart = legend(series) + bar_chart(rows, series, unit=" ms", title="Time per operator type (ORT profiler, per run)", width=640)
    records = [
        {
            "op type": op,
            "original ms": before.get(op, {}).get("ms_per_run"),
            "original share": before.get(op, {}).get("share"),
            "original nodes": before.get(op, {}).get("nodes"),
            "optimized ms": after.get(op, {}).get("ms_per_run"),
            "optimized share": after.get(op, {}).get("share"),
            "optimized nodes": after.get(op, {}).get("nodes"),
        }
        for op in ops
    ]
    more = f'<p class="note">{len(ops) - len(top)} more operator types in the table.</p>' if len(ops) > len(top) else ""
    return f'<h2>Where the time goes</h2><div class="panel">{chart}{more}{record_table(records)}</div>'


def _evaluation_section(report: CompileReport) -> str:
    ev = report.evaluation
    v = report.verification
    parts = []
    if ev:
        acc = ev.get("accuracy")
        if acc:
            series = [("original", ORIGINAL), ("optimized", OPTIMIZED)]
            rows = [("top-1", [acc["original"]["top1"] * 100, acc["optimized"]["top1"] * 100])]
            if acc["original"].get("top5") is not None:
                rows.append(("top-5", [acc["original"]["top5"] * 100, acc["optimized"]["top5"] * 100]))
            drop5 = f" · top-5 drop {acc['drop_top5_pts']:+.2f} pts" if acc.get("drop_top5_pts") is not None else ""
            chart = bar_chart(rows, series, unit="%", title=f"Labeled accuracy on {acc['labels']} samples ({acc['output']})", digits=2)
            parts.append(
                f'<div class="panel">{legend(series)}{chart}'
                f'<p class="note">top-1 drop {acc["drop_top1_pts"]:+.2f} pts{drop5}</p></div>'
            )
        records = []
        for name, d in ev["outputs"].items():
            row = {"output": name, "kind": d["kind"]}
            for key in ("cosine", "cosine_min", "cosine_global", "max_abs", "mean_abs", "top1_agreement", "top5_agreement", "equal"):
                if key in d:
                    row[key] = d[key]
            records.append(row)
        parts.append(
            f'<div class="panel"><h3>Fidelity against the original on {ev["samples"]} samples{(" from " + esc(ev["source"])) if ev.get("source") else ""}</h3>'
            f"{record_table(records)}"
            '<p class="note">cosine: mean per-sample cosine similarity (cosine_min the worst sample); agreement: share of rows whose top-1 class is unchanged (top-5: the original top class is in the optimized top 5).</p></div>'
        )
        if ev.get("metric"):
            m = ev["metric"]
            records = [{"metric": k, **vals} for k, vals in m["values"].items()]
            parts.append(f'<div class="panel"><h3>User metric {esc(m["name"])}</h3>{record_table(records)}</div>')
    if v:
        if v.get("skipped"):
            text = f"skipped: {esc(v['skipped'])}"
        elif v.get("mode") == "off":
            text = "off"
        else:
            ok = v.get("ok")
            tone = "pass" if ok else "fail" if v.get("exact") else "info"
            text = (
                f'<span class="badge {tone}">{"ok" if ok else "differs" if v.get("exact") else "drift (lossy)"}</span> mode {esc(v.get("mode"))} · '
                f"max relative error {v.get('max_rel_error', 0):.2e}"
                + (f" · min cosine {v['min_cosine']:.6f}" if "min_cosine" in v else "")
                + (" · every pass exact" if v.get("exact") else " · lossy passes ran")
            )
        parts.append(f'<div class="panel"><h3>Numeric verification (seeded random inputs)</h3>{text}</div>')
    if not parts:
        return ""
    return "<h2>Accuracy and fidelity</h2>" + "".join(parts)


def _passes_section(report: CompileReport) -> str:
    if not report.passes:
        return ""
    total = sum(p.seconds for p in report.passes) or 1.0
    rows = []
    for i, p in enumerate(report.passes, 1):
        share = p.seconds / total * 100
        stats = ", ".join(f"{k}={num(v)}" for k, v in (p.stats or {}).items() if not isinstance(v, (dict, list)))
        delta = p.nodes_after - p.nodes_before
        rows.append(
            f'<tr class="{"" if p.changed else "dim"}"><td class="num">{i}</td><td><code>{esc(p.name)}</code></td>'
            f'<td><span class="badge {"exact" if p.exact else "lossy"}">{"exact" if p.exact else "lossy"}</span></td>'
            f'<td class="num" style="background: linear-gradient(to left, rgba(79,70,229,.16) {share:.1f}%, transparent {share:.1f}%)">{p.seconds * 1e3:.1f} ms</td>'
            f'<td class="num">{p.nodes_before} → {p.nodes_after}</td><td class="num">{delta:+d}</td>'
            f'<td>{CHANGED_BADGE if p.changed else "–"}</td><td class="stats">{esc(stats)}</td></tr>'
        )
    table = (
        '<table><thead><tr><th class="num">#</th><th>pass</th><th>kind</th><th class="num">time</th><th class="num">nodes</th>'
        f'<th class="num">Δ</th><th>changed</th><th>stats</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    points = [("input", report.passes[0].nodes_before)] + [(p.name, p.nodes_after) for p in report.passes]
    chart = step_chart(points, title="Nodes after each pass", width=640)
    return (
        f'<h2>Passes</h2><div class="panel"><p class="note" style="margin-top:0">{pass_counts(report.passes)}, '
        f"{sum(p.seconds for p in report.passes):.2f} s in all.</p>{chart}{table}</div>"
    )


def _artifacts_section(report: CompileReport) -> str:
    if not report.artifacts:
        return ""
    parts = ["<h2>What the lossy passes decided</h2>"]
    for key, value in report.artifacts.items():
        parts.append(f'<div class="panel"><h3>{esc(key)}</h3>{render_value(value)}</div>')
    return "".join(parts)


def _warnings_section(report: CompileReport) -> str:
    if not report.warnings:
        return ""
    return '<h2>Warnings</h2><div class="panel"><ul class="warnings">' + "".join(f"<li>{esc(w)}</li>" for w in report.warnings) + "</ul></div>"


def _banner(report: CompileReport) -> str:
    gate = report.gate
    if not gate:
        return ""
    failed = gate.get("failed", [])
    if gate["passed"]:
        return f'<div class="banner pass">Gate passed<small>{len(gate["checks"])} thresholds held</small></div>'
    return f'<div class="banner fail">Gate failed<small>{esc(", ".join(failed))} not met</small></div>'


def render_html(report: CompileReport) -> str:
    source = report.source or "model"
    name = source.replace("\\", "/").rsplit("/", 1)[-1]
    title = f"onnxopt · {name} · {report.target}"
    sections: Iterable[str] = (
        _banner(report),
        _cards(report),
        _gate_section(report),
        _latency_section(report),
        _engine_section(report),
        _op_section(report),
        _evaluation_section(report),
        _passes_section(report),
        _artifacts_section(report),
        _warnings_section(report),
    )
    output = f" → {esc(report.output)}" if report.output else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f'<header><h1>{esc(name)} <span class="sub" style="font-weight:400">· onnxopt report</span></h1>'
        f'<div class="sub">{esc(source)} · target <strong>{esc(report.target)}</strong>{output}</div></header>'
        + "".join(sections)
        + f'<footer>onnxopt {esc(report.version)} · generated {esc(time.strftime("%Y-%m-%d %H:%M:%S"))} · a self-contained page: no scripts, no network.</footer>'
        "</main></body></html>\n"
    )


register_renderer((".html", ".htm"), render_html)
