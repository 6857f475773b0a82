"""Charts as inline SVG, rendered on the server: a sparkline for a table cell and a
line chart with axes for a page. No script, no chart library: the SVG is markup in
the page (so a CSP without ``unsafe-inline`` scripts allows it), and every value that
reaches it is a number or an escaped label."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape

from markupsafe import Markup

Fmt = Callable[[float], str]


def _scale(values: Sequence[float], lo_px: float, hi_px: float) -> list[float]:
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return [hi_px - (v - lo) / span * (hi_px - lo_px) for v in values]


def sparkline(
    values: Sequence[float], *, width: int = 120, height: int = 24, title: str = ""
) -> Markup:
    """A line over ``values`` (oldest first), the last point marked; empty for < 2."""
    if len(values) < 2:
        return Markup('<span class="muted">–</span>')
    step = (width - 4) / (len(values) - 1)
    ys = _scale(values, 3, height - 3)
    pts = " ".join(f"{2 + i * step:.1f},{y:.1f}" for i, y in enumerate(ys))
    last_x, last_y = 2 + (len(values) - 1) * step, ys[-1]
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{pts}"/>'
        f'<circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="2.2" fill="currentColor"/></svg>'
    )


def line_chart(
    points: Sequence[tuple[datetime, float]],
    *,
    title: str,
    fmt: Fmt = lambda v: f"{v:g}",
    width: int = 460,
    height: int = 180,
    series_class: str = "series",
) -> Markup:
    """``points`` (time, value), oldest first, as a line with a y axis (min, max) and
    an x axis (first and last date)."""
    if not points:
        return Markup(f'<p class="muted">{escape(title)}: no data yet</p>')
    left, right, top, bottom = 64, 12, 26, 26
    values = [v for _, v in points]
    lo, hi = min([*values, 0.0]), max(values)
    hi = hi if hi > lo else lo + 1.0
    t0, t1 = points[0][0].timestamp(), points[-1][0].timestamp()
    span = t1 - t0 or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(t: datetime, v: float) -> tuple[float, float]:
        x = left + ((t.timestamp() - t0) / span if t1 > t0 else 0.5) * plot_w
        return x, top + plot_h - (v - lo) / (hi - lo) * plot_h

    coords = [xy(t, v) for t, v in points]
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2"/>' for x, y in coords[-60:])
    fmt_t = "%Y-%m-%d" if t1 - t0 > 86400 else "%m-%d %H:%M:%S"  # within a day: times
    first, last = points[0][0].strftime(fmt_t), points[-1][0].strftime(fmt_t)
    return Markup(
        f'<svg class="chart {series_class}" width="100%" viewBox="0 0 {width} {height}"'
        f' preserveAspectRatio="xMinYMin meet" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"'
        ' class="axis"/>'
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{escape(fmt(hi))}</text>'
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">{escape(fmt(lo))}</text>'
        f'<text x="{left}" y="{height - 8}">{first}</text>'
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{last}</text>'
        f'<polyline fill="none" stroke-width="2" points="{pts}" class="line"/>'
        f'<g class="dots">{dots}</g></svg>'
    )
