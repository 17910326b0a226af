"""Small server-side SVG charts for the web page: lines, points and bars on linear axes, with
vertical markers (spot, strikes, zero gamma) and a legend.

The output is inline SVG that scales with its container (viewBox, no fixed width), styled only by
CSS classes from the page's stylesheet (the Content-Security-Policy forbids inline styles), and
labelled for screen readers (role="img", <title>, <desc>).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np

WIDTH, HEIGHT = 640, 320
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 28, 44


@dataclass(frozen=True)
class Series:
    name: str
    x: Sequence[float]
    y: Sequence[float]
    kind: str = "line"  # line | points | bars
    css: str = "s1"


@dataclass(frozen=True)
class Marker:
    """A vertical line at x, labelled."""

    x: float
    label: str
    css: str = "m1"


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    markers: list[Marker] = field(default_factory=list)
    zero_line: bool = False
    y_format: str = "{:,.0f}"
    x_format: str = "{:,.2f}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round-numbered ticks covering [lo, hi] (1, 2, 2.5, 5 × 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 12) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def render(chart: Chart, *, chart_id: str) -> str:
    """The chart as one <svg> element (a string of markup, already escaped)."""
    xs = np.concatenate([_finite(s.x) for s in chart.series] + [_finite([m.x for m in chart.markers])]) \
        if chart.series else np.empty(0)
    ys = np.concatenate([_finite(s.y) for s in chart.series]) if chart.series else np.empty(0)
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    head = (f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-labelledby="{title_id} {desc_id}" xmlns="http://www.w3.org/2000/svg">'
            f'<title id="{title_id}">{escape(chart.title)}</title>')
    if xs.size == 0 or ys.size == 0:
        return (head + f'<desc id="{desc_id}">No data to plot.</desc>'
                f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" class="empty" text-anchor="middle">no data</text></svg>')
    x_lo, x_hi = float(xs.min()), float(xs.max())
    y_lo, y_hi = float(ys.min()), float(ys.max())
    if chart.zero_line or any(s.kind == "bars" for s in chart.series):
        y_lo, y_hi = min(y_lo, 0.0), max(y_hi, 0.0)
    pad = (y_hi - y_lo) * 0.06 or abs(y_hi) * 0.1 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def px(x: float) -> float:
        return MARGIN_LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return MARGIN_TOP + (y_hi - y) / (y_hi - y_lo) * plot_h

    parts = [head, f'<desc id="{desc_id}">{escape(_describe(chart))}</desc>']
    parts.append(f'<rect class="plot-bg" x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}"/>')
    for t in nice_ticks(y_lo, y_hi):
        y = py(t)
        parts.append(f'<line class="grid" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(_short(t, chart.y_format))}</text>')
    for t in nice_ticks(x_lo, x_hi, 6):
        x = px(t)
        parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_TOP}" y2="{HEIGHT - MARGIN_BOTTOM}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle">'
                     f'{escape(_short(t, chart.x_format))}</text>')
    if y_lo < 0 < y_hi:
        parts.append(f'<line class="zero" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{py(0):.1f}" y2="{py(0):.1f}"/>')
    for s in chart.series:
        x, y = np.asarray(s.x, dtype=float), np.asarray(s.y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if s.kind == "line" and x.size:
            points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y))
            parts.append(f'<polyline class="series {s.css}" fill="none" points="{points}"><title>{escape(s.name)}</title></polyline>')
        elif s.kind == "points":
            dots = "".join(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3"/>' for a, b in zip(x, y))
            parts.append(f'<g class="points {s.css}"><title>{escape(s.name)}</title>{dots}</g>')
        elif s.kind == "bars" and x.size:
            step = float(np.min(np.diff(np.unique(x)))) if np.unique(x).size > 1 else (x_hi - x_lo) / 20
            half = max(step / (x_hi - x_lo) * plot_w * 0.4, 1.0)
            zero = py(0.0)
            bars = "".join(
                f'<rect class="{"pos" if b >= 0 else "neg"}" x="{px(a) - half:.1f}" y="{min(py(b), zero):.1f}" '
                f'width="{2 * half:.1f}" height="{abs(py(b) - zero):.1f}"/>' for a, b in zip(x, y))
            parts.append(f'<g class="bars {s.css}"><title>{escape(s.name)}</title>{bars}</g>')
    for i, m in enumerate(chart.markers):
        if not math.isfinite(m.x):
            continue
        x = px(m.x)
        parts.append(f'<line class="marker {m.css}" x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_TOP}" '
                     f'y2="{HEIGHT - MARGIN_BOTTOM}"><title>{escape(m.label)}</title></line>')
        label_y = MARGIN_TOP + 12 + 12 * (i % 3)
        parts.append(f'<text class="marker-label {m.css}" x="{x + 3:.1f}" y="{label_y}">{escape(m.label)}</text>')
    parts.append(f'<text class="axis-label" x="{MARGIN_LEFT + plot_w / 2}" y="{HEIGHT - 6}" '
                 f'text-anchor="middle">{escape(chart.x_label)}</text>')
    parts.append(f'<text class="axis-label" x="12" y="{MARGIN_TOP + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2})">{escape(chart.y_label)}</text>')
    legend_x = MARGIN_LEFT
    for s in chart.series:
        parts.append(f'<rect class="legend {s.css}" x="{legend_x}" y="8" width="10" height="10"/>'
                     f'<text class="legend-text" x="{legend_x + 14}" y="17">{escape(s.name)}</text>')
        legend_x += 24 + 7 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)


def _short(value: float, fmt: str) -> str:
    if abs(value) >= 1e9:
        return f"{value / 1e9:,.1f}B"
    if abs(value) >= 1e6:
        return f"{value / 1e6:,.1f}M"
    if abs(value) >= 1e4:
        # Up to two decimals, so close ticks (99.95k, 100k) stay distinct.
        return f"{value / 1e3:,.2f}".rstrip("0").rstrip(".") + "k"
    return fmt.format(value)


def _describe(chart: Chart) -> str:
    names = ", ".join(s.name for s in chart.series)
    marks = ", ".join(f"{m.label}" for m in chart.markers if math.isfinite(m.x))
    return f"{chart.y_label} against {chart.x_label}: {names}" + (f"; marked: {marks}" if marks else "")
