"""Figures for the browser: scalars as plotly figures (one per title, one trace per series,
x = iteration), compare overlays, and stored plots made safe to draw.

Why escaping here: plotly.js reads a little HTML in titles, names and tick labels (``<b>``,
``<a href>``), so a series called ``<b>x</b>`` would render bold. Every string that reaches
plotly is escaped first, so user text is drawn as text; only the ``<br><sup>`` that ClearML's
figures put before a comment is kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

_SUBTITLE = re.compile(r"&lt;br&gt;&lt;sup&gt;(.*)&lt;/sup&gt;$")
# keys whose string values plotly displays (anything else is an enum, a colour or a number)
MAX_POINTS = 2_000  # drawn per trace; longer series keep each bucket's min and max


def escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def safe_figure(value: Any, key: str = "") -> Any:
    """A copy of a figure with every string escaped for plotly's pseudo-HTML."""
    if isinstance(value, str):
        out = escape_text(value)
        if key == "text" and "&lt;br&gt;" in out:
            out = _SUBTITLE.sub(r"<br><sup>\1</sup>", out)
        return out
    if isinstance(value, Mapping):
        return {k: safe_figure(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [safe_figure(v, key) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _downsample(xs: list, ys: list) -> tuple[list, list]:
    """At most ~MAX_POINTS points for drawing: per bucket the lowest and the highest point, in
    x order, so spikes (a NaN-free loss jump) stay visible; the API keeps every point."""
    n = len(xs)
    if n <= MAX_POINTS:
        return xs, ys
    buckets = MAX_POINTS // 2
    out_x, out_y = [], []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        idx = [i for i in range(lo, hi) if ys[i] is not None]
        if not idx:
            out_x.append(xs[lo])
            out_y.append(None)  # a gap, as in the data
            continue
        i_min = min(idx, key=ys.__getitem__)
        i_max = max(idx, key=ys.__getitem__)
        for i in sorted({i_min, i_max}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def _clean(ys: Iterable[float]) -> list[float | None]:
    return [y if y is not None and math.isfinite(y) else None for y in ys]


def _layout(title: str) -> dict:
    return {"title": {"text": escape_text(title)}, "xaxis": {"title": {"text": "iteration"}},
            "hovermode": "x unified", "margin": {"t": 40, "l": 50, "r": 10, "b": 40},
            "legend": {"orientation": "h"}, "showlegend": True, "height": 320}
    # showlegend: plotly hides the legend of a one-trace chart, which would leave its series
    # name nowhere on the page


def scalar_figures(scalars: Mapping[str, Mapping[str, Mapping[str, list]]]) -> list[dict]:
    """``get_reported_scalars()`` -> one figure per title."""
    figures = []
    for title, series in scalars.items():
        traces = []
        for name, points in series.items():
            xs, ys = _downsample(points["x"], _clean(points["y"]))
            traces.append({"type": "scatter", "mode": "lines", "name": escape_text(name),
                           "x": xs, "y": ys})
        figures.append({"title": title, "figure": {"data": traces, "layout": _layout(title)}})
    return figures


def compare_figures(per_model: list[tuple[str, Mapping[str, Any]]]) -> list[dict]:
    """[(model label, its scalars)] -> one figure per title, one trace per (model, series)."""
    titles: dict[str, list] = {}
    for label, scalars in per_model:
        for title, series in scalars.items():
            for name, points in series.items():
                xs, ys = _downsample(points["x"], _clean(points["y"]))
                titles.setdefault(title, []).append({
                    "type": "scatter", "mode": "lines", "x": xs, "y": ys,
                    "name": escape_text(f"{label}: {name}" if name else label)})
    return [{"title": t, "figure": {"data": traces, "layout": _layout(t)}}
            for t, traces in titles.items()]


def plot_figures(plots: Iterable[Mapping[str, Any]]) -> list[dict]:
    """``get_reported_plots()`` -> the figures to draw, escaped, each with its title/series."""
    return [{"title": p["metric"], "series": p["variant"], "iteration": p["iter"],
             "kind": p["kind"], "figure": safe_figure(p["figure"])} for p in plots]
