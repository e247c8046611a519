"""A self-contained HTML page: the tables plus inline SVG charts (no script, no CDN, no fonts).

Charts: throughput per workload, latency distribution per workload (box plots on a log axis:
box p25–p75, whiskers p5–p99, a tick at the median, a dot at the mean), accuracy and agreement,
and each engine's share of the matmul roofline.  Everything is escaped; the page loads nothing.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from onnxguard.bench import report

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948",
           "#9c755f")
WIDTH = 860
LABEL_W = 210
ROW_H = 22


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def _svg(height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = 12,
          weight: str = "normal", fill: str = "#222") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(text)}</text>')


def bar_chart(title: str, groups: list[tuple[str, list[tuple[str, float, str, str]]]],
              unit: str, lo: float = 0.0, hi: float | None = None) -> str:
    """Horizontal bars; ``groups`` = [(group title, [(label, value, color, annotation)])]."""
    values = [v for _, bars in groups for _, v, _, _ in bars]
    top = hi if hi is not None else _nice_max(max(values, default=1.0))
    plot_w = WIDTH - LABEL_W - 120
    body: list[str] = [_text(0, 16, title, size=14, weight="bold")]
    y = 30
    for group_title, bars in groups:
        body.append(_text(0, y + 12, group_title, size=12, weight="bold", fill="#555"))
        y += 18
        for label, value, color, note in bars:
            frac = 0.0 if top <= lo else max(0.0, min(1.0, (value - lo) / (top - lo)))
            body.append(_text(LABEL_W - 6, y + 15, label, anchor="end"))
            body.append(f'<rect x="{LABEL_W}" y="{y + 3}" width="{frac * plot_w:.1f}" '
                        f'height="{ROW_H - 6}" fill="{color}"/>')
            body.append(_text(LABEL_W + frac * plot_w + 6, y + 15, note))
            y += ROW_H
        y += 8
    body.append(f'<line x1="{LABEL_W}" y1="28" x2="{LABEL_W}" y2="{y}" stroke="#999"/>')
    body.append(_text(LABEL_W, y + 14, f"{lo:g}", anchor="middle", size=10, fill="#666"))
    body.append(_text(LABEL_W + plot_w, y + 14, f"{top:g} {unit}", anchor="middle", size=10,
                      fill="#666"))
    return _svg(y + 22, body, title)


def box_chart(title: str, groups: list[tuple[str, list[tuple[str, list[float], str]]]]) -> str:
    """Latency distributions on a shared log axis (ms)."""
    samples = [s for _, rows in groups for _, xs, _ in rows for s in xs if s > 0]
    if not samples:
        return ""
    lo = 10 ** math.floor(math.log10(min(samples)))
    hi = 10 ** math.ceil(math.log10(max(samples)))
    hi = hi * 10 if hi <= lo else hi
    plot_w = WIDTH - LABEL_W - 40

    def x_of(ms: float) -> float:
        return LABEL_W + (math.log10(max(ms, lo)) - math.log10(lo)) / (
            math.log10(hi) - math.log10(lo)) * plot_w

    body: list[str] = [_text(0, 16, title, size=14, weight="bold")]
    y = 30
    for group_title, rows in groups:
        body.append(_text(0, y + 12, group_title, size=12, weight="bold", fill="#555"))
        y += 18
        for label, xs, color in rows:
            if not xs:
                continue
            p5, p25, p50, p75, p99 = (float(v) for v in np.percentile(xs, [5, 25, 50, 75, 99]))
            mid = y + ROW_H / 2
            body.append(_text(LABEL_W - 6, y + 15, label, anchor="end"))
            body.append(f'<line x1="{x_of(p5):.1f}" y1="{mid:.1f}" x2="{x_of(p99):.1f}" '
                        f'y2="{mid:.1f}" stroke="{color}" stroke-width="1.5"/>')
            body.append(f'<rect x="{x_of(p25):.1f}" y="{y + 4}" '
                        f'width="{max(1.0, x_of(p75) - x_of(p25)):.1f}" height="{ROW_H - 8}" '
                        f'fill="{color}" fill-opacity="0.45" stroke="{color}"/>')
            body.append(f'<line x1="{x_of(p50):.1f}" y1="{y + 3}" x2="{x_of(p50):.1f}" '
                        f'y2="{y + ROW_H - 3}" stroke="#000" stroke-width="2"/>')
            body.append(f'<circle cx="{x_of(float(np.mean(xs))):.1f}" cy="{mid:.1f}" r="2.5" '
                        f'fill="#000"/>')
            y += ROW_H
        y += 8
    decade = lo
    while decade <= hi * 1.0001:
        x = x_of(decade)
        body.append(f'<line x1="{x:.1f}" y1="28" x2="{x:.1f}" y2="{y}" stroke="#ddd"/>')
        body.append(_text(x, y + 14, f"{decade:g} ms", anchor="middle", size=10, fill="#666"))
        decade *= 10
    return _svg(y + 22, body, title)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c.replace('**', ''))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any]) -> str:
    engines = report.engines_of(data)
    colors = {e["id"]: _color(i) for i, e in enumerate(engines)}
    workloads = data["workloads"]
    throughput = bar_chart("Throughput (sequences/s, median over rounds; longer is better)", [
        (report.workload_title(w), [
            (e["label"], r["throughput_seq_per_s"], colors[e["id"]],
             f"{r['throughput_seq_per_s']:,.1f}/s" + (
                 f"  ({x:.2f}× PyTorch)" if (x := report.speedup(data, e["id"], w["id"]))
                 and e["id"] != "pytorch" else ""))
            for e in engines if (r := report.run_of(data, e["id"], w["id"]))])
        for w in workloads], "seq/s")
    latency = box_chart("Latency per batch (ms, log scale): box p25–p75, whiskers p5–p99, "
                        "bar median, dot mean", [
                            (report.workload_title(w), [
                                (e["label"], list(r["batch_ms"]), colors[e["id"]])
                                for e in engines if (r := report.run_of(data, e["id"], w["id"]))])
                            for w in workloads])
    charts = [throughput, latency, _quality_chart(data, engines, colors),
              _roofline_chart(data, engines, colors)]
    sections = []
    seed = report.seed_workload(data)
    if seed is not None:
        sections.append((f"{report.HEADLINE}: " + report.workload_title(seed),
                         _table(*report.seed_rows(data))
                         + f"<p class=note>{escape(report.SEED_TABLE)}</p>"))
        if report.candidate_engines(data):
            sections.append((report.CANDIDATES, _table(*report.seed_rows(data, candidates=True))))
    sections += [
        ("Targets", _table(*report.target_rows(data))),
        ("Every workload", _table(*report.workload_rows(data))),
        ("Accuracy and agreement", _table(*report.quality_rows(data))),
        ("Engines", _table(*report.engine_rows(data))),
        ("Roofline", "<p>" + escape(report.roofline_text(data).split("\n\n")[0]) + "</p>"),
    ]
    if data["profiles"]:
        sections.append(("Where the time goes (ONNX Runtime profiler)",
                         _table(*report.profile_rows(data))))
    model, cfg = data["model"], data["config"]
    body = [f"<h1>onnxguard bench: {escape(report.model_title(data))}</h1>",
            f"<p>{escape(model['task'])} · measured {escape(data['machine']['date'])}</p>",
            f"<p class=note>{escape(report.machine_line(data))}</p>",
            *([f"<p class=warn>{escape(w)}</p>"] if (w := report.busy_warning(data)) else []),
            f"<pre>{escape(cfg['command'] or '(library call)')}</pre>"]
    body += [f'<div class="chart">{c}</div>' for c in charts if c]
    body += [f"<h2>{escape(title)}</h2>{html}" for title, html in sections]
    return _PAGE.format(title=escape(f"onnxguard bench: {model['name']}"), body="\n".join(body))


def _quality_chart(data: dict[str, Any], engines: list[dict[str, Any]],
                   colors: dict[str, str]) -> str:
    quals = data["quality"]
    if not quals:
        return ""
    modes = list(dict.fromkeys(q["mode"] for q in quals))
    labelled = any(q["accuracy"] is not None for q in quals)
    groups = []
    for mode in modes:
        bars = []
        for e in engines:
            q = report.quality_of(data, e["id"], mode)
            if q is None:
                continue
            if labelled:
                agree = q["agreement_with_pytorch"]
                bars.append((e["label"], q["accuracy"] * 100, colors[e["id"]],
                             f"{q['accuracy'] * 100:.2f}%  F1 {q['f1']:.3f}" + (
                                 f"  agreement {agree * 100:.1f}%" if agree is not None else "")))
            elif q["mean_cosine_with_pytorch"] is not None:
                bars.append((e["label"], q["mean_cosine_with_pytorch"], colors[e["id"]],
                             f"mean cos {q['mean_cosine_with_pytorch']:.5f}"))
        groups.append((f"input mode {mode}", bars))
    values = [v for _, bars in groups for _, v, _, _ in bars]
    if labelled:
        lo = max(0.0, math.floor(min(values, default=0.0) / 5) * 5 - 5)
        return bar_chart("Accuracy on the labelled data (%)", groups, "%", lo, 100.0)
    lo = min(0.99, math.floor(min(values, default=0.99) * 100) / 100)
    return bar_chart("Mean cosine similarity to PyTorch", groups, "", lo, 1.0)


def _roofline_chart(data: dict[str, Any], engines: list[dict[str, Any]],
                    colors: dict[str, str]) -> str:
    seed = report.seed_workload(data)
    if seed is None:
        return ""
    bars = []
    for e in engines:
        r = report.run_of(data, e["id"], seed["id"])
        if r and r["peak_fraction"] is not None:
            bars.append((e["label"], r["peak_fraction"] * 100, colors[e["id"]],
                         f"{r['peak_fraction'] * 100:.0f}% of {e['precision']} peak "
                         f"({r['achieved_gflops']:.0f} GFLOP/s)"))
    return bar_chart("Share of this machine's matmul roofline", [
        (report.workload_title(seed), bars)], "%", 0.0, 100.0) if bars else ""


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child, td:nth-child(2) {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.chart {{ margin: 1.5em 0; }}
.note {{ color: #555; font-size: 13px; }}
.warn {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""
