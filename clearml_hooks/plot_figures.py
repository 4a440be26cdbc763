"""Plotly figures from the arguments of ``report_*``: plots are stored as ClearML stores them.

ClearML's SDK turns every ``report_histogram`` / ``report_table`` / ... into a plotly figure (a
``{"data": [traces], "layout": {...}}`` dict) and stores that; its UI draws the figure as is. We
do the same, so our UI, ClearML readers and any plotly client draw exactly what was reported.
``data_args`` is merged into every histogram trace and ``extra_layout`` into the layout (deep
merge), as ClearML does.

``figure_for(kind, plain)`` also converts the plain data that release 0.1 stored (one dict per
kind, see ``model_reporting``); readers call ``as_figure`` so old catalogs keep rendering without
a rewrite. Pure Python: no numpy, no plotly import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

FIGURE_KINDS = ("histogram", "table", "line", "scatter2d", "scatter3d", "confusion_matrix",
                "surface")
_SCATTER_MODES = {"line": "lines", "lines": "lines", "marker": "markers", "markers": "markers",
                  "both": "lines+markers", "lines+markers": "lines+markers",
                  "markers+lines": "lines+markers", "text": "text"}
# ClearML's heat-map colours (viridis-like), as a plotly colorscale
_COLORSCALE = [[0.0, "rgb(71,17,100)"], [0.1, "rgb(53,92,140)"], [0.2, "rgb(37,139,141)"],
               [0.6, "rgb(66,189,112)"], [0.9, "rgb(141,214,68)"], [1.0, "rgb(221,226,24)"]]


def merge(base: dict, extra: Mapping | None) -> dict:
    """``extra`` merged into ``base`` recursively (dicts merge, anything else replaces)."""
    if not extra:
        return base
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _title(text: str | None, comment: str | None = None) -> dict:
    text = text or ""
    return {"text": f"{text}<br><sup>{comment}</sup>" if comment else text}


def _axis(title: str | None, **extra: Any) -> dict:
    return {"title": {"text": title or ""}, **extra}


def _histogram(title: str, series: str, d: Mapping) -> dict:
    values = d.get("values") or []
    rows = values if values and all(isinstance(r, list) for r in values) else [values]
    labels, xlabels = d.get("labels"), d.get("xlabels")
    names = list(labels) if labels and len(labels) == len(rows) else [series] * len(rows)
    traces = []
    for name, row in zip(names, rows, strict=True):
        trace = {"type": "bar", "name": name, "y": row,
                 "x": list(xlabels) if xlabels and len(xlabels) == len(row) else list(range(len(row)))}
        traces.append(merge(trace, d.get("data_args")))
    layout = {"title": _title(series if labels else title, d.get("comment")),
              "xaxis": _axis(d.get("xaxis")), "yaxis": _axis(d.get("yaxis")),
              "barmode": d.get("mode") or "group", "bargap": 0.08, "bargroupgap": 0,
              "showlegend": True}
    return {"data": traces, "layout": merge(layout, d.get("extra_layout"))}


def _table(title: str, series: str, d: Mapping) -> dict:
    columns, rows = list(d.get("columns") or []), d.get("rows") or []
    cells = [[row[i] if i < len(row) else None for row in rows] for i in range(len(columns))]
    trace = {"type": "table", "header": {"values": columns, "align": "left"},
             "cells": {"values": cells, "align": "left"}}
    layout = {"title": _title(f"{title} / {series}" if series else title)}
    return {"data": [trace], "layout": merge(layout, d.get("extra_layout"))}


def _scatter_layout(title: str, d: Mapping) -> dict:
    spikes = {"showspikes": True, "spikethickness": 1, "spikesnap": "cursor",
              "spikemode": "toaxis+across"}
    return {"title": _title(title, d.get("comment")), "xaxis": _axis(d.get("xaxis"), **spikes),
            "yaxis": _axis(d.get("yaxis"), **spikes), "hovermode": "closest"}


def _line(title: str, _series: str, d: Mapping) -> dict:
    mode = _SCATTER_MODES.get(d.get("mode") or "lines", d.get("mode") or "lines")
    traces = [{"type": "scatter", "mode": mode, "name": s.get("name"),
               "x": [p[0] for p in s.get("data") or []], "y": [p[1] for p in s.get("data") or []],
               "text": s.get("labels")} for s in d.get("series") or []]
    layout = _scatter_layout(title, d)
    if d.get("reverse_xaxis"):
        layout["xaxis"]["autorange"] = "reversed"
    return {"data": traces, "layout": merge(layout, d.get("extra_layout"))}


def _scatter2d(title: str, series: str, d: Mapping) -> dict:
    points = d.get("points") or []
    mode = _SCATTER_MODES.get(d.get("mode") or "lines", d.get("mode") or "lines")
    trace = {"type": "scatter", "mode": mode, "name": series, "x": [p[0] for p in points],
             "y": [p[1] for p in points], "text": d.get("labels")}
    return {"data": [trace], "layout": merge(_scatter_layout(title, d), d.get("extra_layout"))}


def _scatter3d(title: str, series: str, d: Mapping) -> dict:
    points = d.get("points") or []
    mode = _SCATTER_MODES.get(d.get("mode") or "markers", d.get("mode") or "markers")
    trace = {"type": "scatter3d", "mode": mode, "name": series, "x": [p[0] for p in points],
             "y": [p[1] for p in points], "z": [p[2] for p in points], "text": d.get("labels"),
             "marker": {"size": 5, "opacity": 0.8}}
    if d.get("fill"):
        trace["surfaceaxis"] = 2
    layout = {"title": _title(title, d.get("comment")), "showlegend": True,
              "scene": {"xaxis": _axis(d.get("xaxis")), "yaxis": _axis(d.get("yaxis")),
                        "zaxis": _axis(d.get("zaxis"))}}
    return {"data": [trace], "layout": merge(layout, d.get("extra_layout"))}


def _heatmap(title: str, series: str, d: Mapping) -> dict:
    trace = {"type": "heatmap", "z": d.get("matrix") or [], "x": d.get("xlabels"),
             "y": d.get("ylabels"), "colorscale": _COLORSCALE, "name": series}
    layout = {"title": _title(title, d.get("comment")), "xaxis": _axis(d.get("xaxis")),
              "yaxis": _axis(d.get("yaxis"))}
    if d.get("yaxis_reversed"):
        layout["yaxis"]["autorange"] = "reversed"
    return {"data": [trace], "layout": merge(layout, d.get("extra_layout"))}


def _surface(title: str, series: str, d: Mapping) -> dict:
    xl, yl = d.get("xlabels"), d.get("ylabels")

    def axis(text: Any, labels: list | None) -> dict:
        out = _axis(text, showgrid=False, nticks=10)
        if labels:
            out.update(ticktext=labels, tickvals=list(range(len(labels))))
        return out

    trace = {"type": "surface", "z": d.get("matrix") or [], "colorscale": _COLORSCALE,
             "showscale": False, "name": series}
    scene = {"xaxis": axis(d.get("xaxis"), xl), "yaxis": axis(d.get("yaxis"), yl),
             "zaxis": _axis(d.get("zaxis"), nticks=5)}
    camera = d.get("camera")
    if camera:
        scene["camera"] = {"eye": {"x": camera[0], "y": camera[1], "z": camera[2]}}
    layout = {"title": _title(title, d.get("comment")), "showlegend": False, "scene": scene}
    return {"data": [trace], "layout": merge(layout, d.get("extra_layout"))}


_BUILDERS = {"histogram": _histogram, "table": _table, "line": _line, "scatter2d": _scatter2d,
             "scatter3d": _scatter3d, "confusion_matrix": _heatmap, "surface": _surface}


def figure_for(kind: str, title: str, series: str, plain: Mapping) -> dict:
    """The plotly figure of one report (``plain``: the checked arguments of ``report_<kind>``)."""
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise ValueError(f"unknown plot kind {kind!r}")
    return builder(title, series, plain)


def is_figure(value: Any) -> bool:
    """A stored plot that already is a figure (release 0.1 stored plain data: no ``layout``)."""
    return isinstance(value, Mapping) and isinstance(value.get("data"), list) \
        and isinstance(value.get("layout"), Mapping)


def as_figure(kind: str, title: str, series: str, stored: str | Mapping) -> dict:
    """A stored plot as a figure, converting the plain data of older releases on the fly."""
    value = json.loads(stored) if isinstance(stored, str) else stored
    if is_figure(value):
        return dict(value)
    if kind in _BUILDERS and isinstance(value, Mapping):
        return figure_for(kind, title, series, value)
    return {"data": [], "layout": {"title": _title(f"{title} (unreadable plot of kind {kind})")}}
