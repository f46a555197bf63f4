"""The dashboards as one self-contained HTML page: inline CSS and server-drawn inline SVG charts.

No script, no font, no image, no request of any kind leaves the page (the gateway also serves it
with a ``Content-Security-Policy`` that forbids them), so a report file can be mailed or opened
offline. Every chart is followed by its numbers as a table.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence

from engine.archive.dashboards import Chart, Dashboard, DashboardParams
from engine.archive.store import QueryResult

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 16, 34
MAX_SERIES = 8
MAX_BARS = 15
MAX_TABLE_ROWS = 200
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;
background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 4px}
.meta{color:#666;margin-bottom:20px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:16px;margin:0 0 18px;
max-width:980px}
.desc{color:#555;margin:0 0 10px}.empty{color:#999;font-style:italic}
svg{display:block;margin:6px 0 10px}svg text{font-size:11px;fill:#444}
.axis{stroke:#999;stroke-width:1}.grid{stroke:#eee;stroke-width:1}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #e3e3e3;padding:2px 8px;
text-align:right}th{background:#f3f3f3}td.s,th.s{text-align:left}
details{margin-top:6px}
"""


def _fmt_time(ms: int, bucket_ms: int, span_ms: int) -> str:
    t = time.gmtime(ms / 1000)
    if bucket_ms >= 86_400_000:
        return time.strftime("%Y-%m-%d", t)
    if span_ms > 2 * 86_400_000:
        return time.strftime("%m-%d %H:%M", t)
    return time.strftime("%H:%M:%S" if span_ms < 15 * 60_000 else "%H:%M", t)


def _fmt_num(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return float(step * exp)
    return float(10 * exp)


def _num(value: object) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return 0.0


def line_chart(
    result: QueryResult, chart: Chart, params: DashboardParams, *, title: str
) -> str:
    cols = {name: i for i, name in enumerate(result.columns)}
    xi = cols[chart.x]
    # series name -> {x: y}
    series: dict[str, dict[int, float]] = {}
    if chart.series:
        si, yi = cols[chart.series], cols[chart.y[0]]
        for row in result.rows:
            series.setdefault(str(row[si]), {})[int(_num(row[xi]))] = _num(row[yi])
    else:
        for y in chart.y:
            yi = cols[y]
            series[y] = {int(_num(row[xi])): _num(row[yi]) for row in result.rows}
    if len(series) > MAX_SERIES:  # keep the largest series
        ranked = sorted(series.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        series = dict(ranked[:MAX_SERIES])
    x0 = params.since_ms - params.since_ms % params.bucket_ms
    x1 = max(x0 + params.bucket_ms, params.until_ms)
    ymax = _nice_max(max((v for s in series.values() for v in s.values()), default=0.0))
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - y / ymax * ph

    parts = [
        f'<svg class="chart line" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">'
    ]
    for i in range(5):
        tick = ymax * i / 4
        ty = sy(tick)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{ty:.1f}" x2="{LEFT + pw}" '
                     f'y2="{ty:.1f}"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">'
                     f"{_fmt_num(tick)}</text>")
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        px = sx(x)
        parts.append(f'<text x="{px:.1f}" y="{HEIGHT - 12}" text-anchor="middle">'
                     f"{_fmt_time(int(x), params.bucket_ms, x1 - x0)}</text>")
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" '
                 f'y2="{TOP + ph}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}"/>')
    for n, (name, points) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        xs = sorted(points)
        coords = " ".join(f"{sx(x + params.bucket_ms / 2):.1f},{sy(points[x]):.1f}" for x in xs)
        label = html.escape(name)
        if len(xs) == 1:
            cx, cy = coords.split(",")
            parts.append(f'<circle class="series" cx="{cx}" cy="{cy}" r="3" fill="{color}">'
                         f"<title>{label}</title></circle>")
        else:
            parts.append(f'<polyline class="series" fill="none" stroke="{color}" '
                         f'stroke-width="2" points="{coords}"><title>{label}</title>'
                         f"</polyline>")
        ly = TOP + 12 + n * 16
        parts.append(f'<rect x="{LEFT + pw + 12}" y="{ly - 9}" width="10" height="10" '
                     f'fill="{color}"/>')
        parts.append(f'<text x="{LEFT + pw + 28}" y="{ly}">{label[:18]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(result: QueryResult, chart: Chart, *, title: str) -> str:
    cols = {name: i for i, name in enumerate(result.columns)}
    xi, yi = cols[chart.x], cols[chart.y[0]]
    rows = [(str(r[xi]), _num(r[yi])) for r in result.rows[:MAX_BARS]]
    bar_h, gap = 18, 6
    height = TOP + len(rows) * (bar_h + gap) + 8
    label_w = 150
    pw = WIDTH - label_w - 80
    vmax = max((v for _l, v in rows), default=0.0) or 1.0
    parts = [
        f'<svg class="chart bar" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{html.escape(title)}">'
    ]
    for n, (label, value) in enumerate(rows):
        y = TOP + n * (bar_h + gap)
        w = max(1.0, value / vmax * pw)
        text = html.escape(label)
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">'
                     f"{text[:22]}</text>")
        parts.append(f'<rect class="series" x="{label_w}" y="{y}" width="{w:.1f}" '
                     f'height="{bar_h}" fill="{PALETTE[0]}"><title>{text}: '
                     f"{_fmt_num(value)}</title></rect>")
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 13}">{_fmt_num(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _is_time_column(name: str) -> bool:
    return name == "bucket_ms" or name.endswith("_at_ms")


def table(result: QueryResult, params: DashboardParams) -> str:
    head = "".join(
        f'<th class="{"s" if _is_time_column(c) else ""}">{html.escape(c)}</th>'
        for c in result.columns
    )
    body = []
    for row in result.rows[:MAX_TABLE_ROWS]:
        cells = []
        for name, value in zip(result.columns, row, strict=True):
            if _is_time_column(name):
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(_num(value) / 1000))
                cells.append(f'<td class="s">{when}</td>')
            elif isinstance(value, int | float) and not isinstance(value, bool):
                cells.append(f"<td>{_fmt_num(value)}</td>")
            else:
                cells.append(f'<td class="s">{html.escape(str(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = len(result.rows) - MAX_TABLE_ROWS
    tail = f'<p class="empty">{more} more rows</p>' if more > 0 else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{tail}"


def render_section(dashboard: Dashboard, result: QueryResult, params: DashboardParams) -> str:
    title = html.escape(dashboard.title)
    parts = [
        f'<section id="{html.escape(dashboard.name)}" data-dashboard="'
        f'{html.escape(dashboard.name)}" data-rows="{len(result.rows)}">',
        f"<h2>{title}</h2>",
        f'<p class="desc">{html.escape(dashboard.description)}</p>',
    ]
    if not result.rows:
        parts.append('<p class="empty">No data in this window.</p>')
    elif dashboard.chart.kind == "line":
        parts.append(line_chart(result, dashboard.chart, params, title=dashboard.title))
    else:
        parts.append(bar_chart(result, dashboard.chart, title=dashboard.title))
    if result.rows:
        parts.append(f"<details><summary>Numbers ({len(result.rows)} rows)</summary>"
                     f"{table(result, params)}</details>")
    parts.append("</section>")
    return "\n".join(parts)


def render_report(
    results: Sequence[tuple[Dashboard, QueryResult]],
    params: DashboardParams,
    *,
    source: str = "",
    generated_ms: int | None = None,
) -> str:
    generated = generated_ms if generated_ms is not None else int(time.time() * 1000)
    since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(params.since_ms / 1000))
    until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(params.until_ms / 1000))
    scope = f"room {html.escape(params.room)}" if params.room else "all rooms"
    bucket = f"{params.bucket_ms // 60_000} min" if params.bucket_ms >= 60_000 else (
        f"{params.bucket_ms} ms")
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(generated / 1000))
    sections = "\n".join(render_section(d, r, params) for d, r in results)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>danmaku dashboards</title><style>{_CSS}</style></head><body>"
        "<h1>danmaku dashboards</h1>"
        f'<p class="meta">{scope}, {since} to {until} UTC, buckets of {bucket}. '
        f"Generated {made} UTC{' from ' + html.escape(source) if source else ''}.</p>"
        f"{sections}</body></html>\n"
    )
