"""The tune report as one self-contained HTML page: a scatter of speedup against accuracy (inline
SVG, no scripts, no network), the Pareto front and the chosen model marked, the front's recipes as
command lines that reproduce them, and every trial."""

from __future__ import annotations

from typing import Any

from onnxopt.report_html import CSS, esc

WIDTH, HEIGHT, PAD = 720, 400, 56
FEASIBLE, INFEASIBLE, FRONT, CHOSEN = "#2563eb", "#94a3b8", "#f97316", "#dc2626"


def _x_value(trial: dict[str, Any], objective: str) -> float | None:
    return trial.get("drop_pts") if objective == "drop" else trial.get("fidelity")


def _scale(low: float, high: float, start: float, end: float):
    span = (high - low) or 1.0
    return lambda v: start + (v - low) / span * (end - start)


def scatter(result) -> str:
    """`result` is a TuneResult (not imported: result.py imports this module)."""
    objective = result.objective
    points = [t for t in result.trials if t["state"] == "complete" and t.get("speedup") is not None and _x_value(t, objective) is not None]
    if not points:
        return "<p>No trial completed, so there is nothing to plot.</p>"
    xs = [_x_value(t, objective) for t in points]
    ys = [t["speedup"] for t in points] + [1.0]
    limit = result.budget.get("max_drop") if objective == "drop" else result.budget.get("min_fidelity")
    if limit is not None:
        xs.append(limit)
    x = _scale(min(xs), max(xs), PAD, WIDTH - 16)
    y = _scale(0.0, max(ys) * 1.08, HEIGHT - PAD, 16)
    label = "accuracy drop (points; left is better)" if objective == "drop" else "fidelity (cosine to the original; right is better)"
    parts = [f'<svg class="chart" role="img" aria-label="speedup against accuracy" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" style="width:100%;max-width:{WIDTH}px;height:auto">']
    parts.append(f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 16}" y2="{HEIGHT - PAD}" stroke="#64748b"/><line x1="{PAD}" y1="16" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#64748b"/>')
    for i in range(5):
        vy = max(ys) * 1.08 * i / 4
        vx = min(xs) + (max(xs) - min(xs)) * i / 4
        parts.append(f'<text x="{PAD - 6}" y="{y(vy) + 4:.1f}" text-anchor="end" font-size="11">{vy:.1f}x</text>')
        parts.append(f'<text x="{x(vx):.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle" font-size="11">{vx:.3g}</text>')
    parts.append(f'<text x="{(PAD + WIDTH) / 2:.0f}" y="{HEIGHT - 12}" text-anchor="middle" font-size="12">{esc(label)}</text>')
    parts.append(f'<text x="14" y="{HEIGHT / 2:.0f}" text-anchor="middle" font-size="12" transform="rotate(-90 14 {HEIGHT / 2:.0f})">speedup (measured, paired)</text>')
    parts.append(f'<line class="baseline" x1="{PAD}" y1="{y(1.0):.1f}" x2="{WIDTH - 16}" y2="{y(1.0):.1f}" stroke="#cbd5e1" stroke-dasharray="4 4"/>')
    if limit is not None:
        parts.append(f'<line class="budget" x1="{x(limit):.1f}" y1="16" x2="{x(limit):.1f}" y2="{HEIGHT - PAD}" stroke="{CHOSEN}" stroke-dasharray="6 3"/>'
                     f'<text x="{x(limit) + 4:.1f}" y="28" font-size="11" fill="{CHOSEN}">budget</text>')
    for t in points:
        color = FEASIBLE if t["feasible"] else INFEASIBLE
        px, py = x(_x_value(t, objective)), y(t["speedup"])
        low, high = t["ci95"] or (t["speedup"], t["speedup"])
        parts.append(f'<line x1="{px:.1f}" y1="{y(low):.1f}" x2="{px:.1f}" y2="{y(high):.1f}" stroke="{color}" stroke-opacity="0.5"/>')
        parts.append(f'<circle class="trial" cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{color}"><title>#{t["number"]} {esc(t["command"])}</title></circle>')
    front = result.front()
    if front:
        path = " ".join(f"{x(_x_value(t, objective)):.1f},{y(t['speedup']):.1f}" for t in sorted(front, key=lambda t: _x_value(t, objective)))
        parts.append(f'<polyline class="pareto" points="{path}" fill="none" stroke="{FRONT}" stroke-width="2"/>')
        for t in front:
            parts.append(f'<circle class="front" cx="{x(_x_value(t, objective)):.1f}" cy="{y(t["speedup"]):.1f}" r="6" fill="none" stroke="{FRONT}" stroke-width="2"/>')
    if result.best is not None and _x_value(result.best, objective) is not None:
        bx, by = x(_x_value(result.best, objective)), y(result.best["speedup"])
        parts.append(f'<circle class="chosen" cx="{bx:.1f}" cy="{by:.1f}" r="10" fill="none" stroke="{CHOSEN}" stroke-width="3"/>'
                     f'<text x="{bx + 12:.1f}" y="{by - 8:.1f}" font-size="12" fill="{CHOSEN}">chosen #{result.best["number"]}</text>')
    parts.append("</svg>")
    legend = (f'<p><span style="color:{FEASIBLE}">●</span> feasible trial · <span style="color:{INFEASIBLE}">●</span> over the budget · '
              f'<span style="color:{FRONT}">○</span> Pareto front · <span style="color:{CHOSEN}">◯</span> chosen model · vertical bars: 95% CI of the speedup</p>')
    return "".join(parts) + legend


def _cell(value: Any, fmt: str = "{:.3g}") -> str:
    return "" if value is None else esc(fmt.format(value) if isinstance(value, float) else value)


def _rows(trials: list[dict[str, Any]], objective: str) -> str:
    head = "<tr><th>#</th><th>state</th><th>speedup</th><th>95% CI</th><th>" + ("drop (pts)" if objective == "drop" else "fidelity") + "</th><th>size MB</th><th>MACs</th><th>s</th><th>where</th><th>command / why</th></tr>"
    body = []
    for t in trials:
        ci = f"{t['ci95'][0]:.2f}–{t['ci95'][1]:.2f}" if t.get("ci95") else ""
        note = t["command"] + (f" — {t['reason']}" if t.get("reason") else "")
        body.append(
            f"<tr><td>{t['number']}</td><td>{esc(t['state'])}{' ✓' if t['feasible'] else ''}</td><td>{_cell(t['speedup'], '{:.2f}x')}</td><td>{ci}</td>"
            f"<td>{_cell(_x_value(t, objective), '{:.4g}')}</td><td>{_cell(t['size_mb'], '{:.2f}')}</td><td>{_cell(t['macs_ratio'], '{:.2f}x')}</td>"
            f"<td>{_cell(t['seconds'], '{:.0f}')}</td><td>{esc(t.get('worker') or '')}</td><td><code>{esc(note)}</code></td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def render(result) -> str:
    budget = ", ".join(f"{k} {v:g}" for k, v in result.budget.items() if v is not None)
    verdict = (f"chosen: trial #{result.best['number']}, {result.best['speedup']:.2f}x" if result.best else "no trial met the budget")
    front = result.front()
    recipes = "".join(f"<li><code>{esc(t['command'])}</code></li>" for t in front) or "<li>none (no feasible trial)</li>"
    return (
        f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>onnxopt tune: {esc(result.source)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>onnxopt tune · {esc(result.source)}</h1>"
        f"<p>{len(result.trials)} trials on {esc(result.executor)} in {result.seconds:.0f} s · budget: {esc(budget)} · {esc(verdict)}</p>"
        f"<h2>Speedup against accuracy</h2>{scatter(result)}"
        f"<h2>Pareto front: recipes that reproduce it</h2><ol>{recipes}</ol>"
        f"<h2>Every trial</h2>{_rows(result.trials, result.objective)}"
        "</main></body></html>\n"
    )
