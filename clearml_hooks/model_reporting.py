"""Metrics and plots reported on models: ClearML's ``Model.report_*`` methods, and readers.

``ModelReporting`` is a mixin of ``Model`` (so ``InputModel`` and ``OutputModel`` have it too). It
needs ``self._store`` (for the catalog) and ``self._id``.

- Scalars go to ``model_scalars``, one row per (model, title, series, iteration). Reporting the
  same point again replaces it, as ClearML's event ids do. A single value is what ClearML makes of
  it: a scalar titled ``"Summary"`` at iteration ``-2**31``.
- Plots are stored as the plotly figure ClearML makes of them (``plot_figures``: ``data_args``
  and ``extra_layout`` merged in), as JSON in ``model_plots`` under a ``kind`` (``histogram``,
  ``table``, ``line``, ``scatter2d``, ``scatter3d``, ``confusion_matrix``, ``surface``). Rows of
  release 0.1 hold plain data instead; readers convert them on the fly (``as_figure``).
- Every report is one statement (an INSERT ... ON CONFLICT DO UPDATE) in one short transaction,
  cheap enough for a training loop. Arguments are checked before anything is written, so a call
  that raises ``ValueError`` leaves the store as it was.

Differences from ClearML: NaN and infinities are kept (ClearML reports them as 0.0): a scalar NaN
reads back as ``float("nan")``, and in plot data NaN and infinities become JSON ``null``. String
values are refused rather than parsed. Reporting on a published model is allowed (evaluation
results often come after publishing). ClearML's SDK has no readers on models; ours are named and
shaped like ``Task``'s readers (``get_reported_scalars`` and the rest).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clearml_hooks.plot_figures import as_figure, figure_for

SUMMARY_TITLE = "Summary"
SINGLE_VALUE_ITERATION = -(2**31)  # where ClearML puts single values
# (both as in store.model_metrics, which writes and reads them; a test checks they agree)
MAX_NAME = 255
_MIN_ITER, _MAX_ITER = -(2**63), 2**63 - 1
_MODES = ("group", "stack", "relative")


class SeriesInfo:
    """One line of ``report_line_plot``: a name, ``(x, y)`` points, optional point labels.

    ClearML's own ``SeriesInfo`` (any object with ``name`` and ``data``) and plain dicts work too.
    """

    def __init__(self, name: str, data: Any, labels: Sequence[str] | None = None) -> None:
        self.name = name
        self.data = data
        self.labels = labels

    def __repr__(self) -> str:
        return f"SeriesInfo(name={self.name!r})"


# -- checking arguments ---------------------------------------------------------------------------

def _name(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what} {value[:40]!r}... is longer than {MAX_NAME} characters")
    return value


def _iteration(value: Any, *, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool):
        raise ValueError(f"iteration must be an integer, got {value!r}")
    try:
        it = operator.index(value)
    except TypeError:
        raise ValueError(f"iteration must be an integer, got {value!r}") from None
    if not _MIN_ITER <= it <= _MAX_ITER:
        raise ValueError(f"iteration {it} is out of range")
    return it


def _number(value: Any, what: str = "value") -> float:
    """A float from an int, float, numpy scalar or one-element tensor; never from a string."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except Exception:
        raise ValueError(f"{what} must be a number, got {type(value).__name__}: "
                         f"{str(value)[:60]}") from None


def _plain(value: Any, what: str) -> Any:
    """JSON-ready data: arrays and tensors as lists, NaN/inf as None, other objects refused."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays and scalars, torch tensors
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple, range)):
        return [_plain(v, what) for v in value]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return [_plain(v, what) for v in value]
    raise ValueError(f"{what} holds a {type(value).__name__}, which cannot be stored")


def _numeric(value: Any, what: str) -> Any:
    """``value`` as plain data whose leaves are all numbers (NaN/inf become None)."""
    data = _plain(value, what)

    def check(x: Any) -> None:
        if isinstance(x, list):
            for item in x:
                check(item)
        elif not (x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))):
            raise ValueError(f"{what} must hold numbers only, got {x!r}")

    check(data)
    return data


def _matrix(value: Any, what: str, *, columns: int | None = None) -> list[list]:
    """A rectangular 2-D list of numbers (``columns`` fixes the width)."""
    data = _numeric(value, what)
    if not isinstance(data, list) or not all(isinstance(row, list) for row in data):
        raise ValueError(f"{what} must be a 2-D array (a list of rows)")
    widths = {len(row) for row in data}
    if len(widths) > 1 or any(isinstance(x, list) for row in data for x in row):
        raise ValueError(f"{what} must be rectangular: rows of equal length, numbers only")
    if columns is not None and data and widths != {columns}:
        raise ValueError(f"{what} must have {columns} columns, got {widths.pop()}")
    return data


def _labels(value: Any, what: str, count: int | None = None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{what} must be a list of strings")
    labels = [str(x) for x in _plain(value, what)]
    if count is not None and len(labels) != count:
        raise ValueError(f"{what} has {len(labels)} labels for {count} entries")
    return labels


def _layout(value: Any, what: str = "extra_layout") -> dict | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict")
    return _plain(value, what)


def _optional_text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def _table(table_plot: Any, csv_path: str | None, url: str | None) -> dict:
    """``{"columns": [...], "rows": [[...]]}`` from a DataFrame, a list of rows (the first one is
    the header, as in ClearML), a CSV file or a CSV URL (the last needs pandas)."""
    given = [x is not None for x in (table_plot, csv_path, url)]
    if sum(given) != 1:
        raise ValueError("report_table needs exactly one of table_plot, csv or url")
    if url is not None or csv_path is not None:
        try:
            import pandas as pd
        except ImportError:
            pd = None
        if pd is not None:
            try:
                table_plot = pd.read_csv(url or csv_path, index_col=[0])
            except Exception as exc:
                raise ValueError(f"cannot read the table from {url or csv_path}: {exc}") from exc
        elif url is not None:
            raise ValueError("report_table(url=...) needs pandas installed")
        else:
            try:
                with open(csv_path, newline="") as f:  # type: ignore[arg-type]
                    table_plot = list(csv.reader(f))
            except OSError as exc:
                raise ValueError(f"cannot read the table from {csv_path}: {exc}") from exc
    if hasattr(table_plot, "columns") and hasattr(table_plot, "index"):  # a pandas DataFrame
        frame = table_plot
        columns = [str(c) for c in frame.columns]
        rows = [list(r) for r in frame.itertuples(index=False, name=None)]
        if type(frame.index).__name__ != "RangeIndex":  # ClearML shows a real index as a column
            columns.insert(0, str(frame.index.name or ""))
            rows = [[idx, *r] for idx, r in zip(frame.index.tolist(), rows, strict=True)]
    elif isinstance(table_plot, (list, tuple)):
        if not table_plot:
            columns, rows = [], []
        else:
            if not all(isinstance(r, (list, tuple)) for r in table_plot):
                raise ValueError("table_plot must be a DataFrame or a list of rows (lists)")
            columns = [str(c) for c in table_plot[0]]
            rows = [list(r) for r in table_plot[1:]]
    else:
        raise ValueError(f"table_plot must be a pandas DataFrame or a list of rows, got "
                         f"{type(table_plot).__name__}")

    def cell(x: Any) -> Any:
        if hasattr(x, "item") and not isinstance(x, (str, bytes)):
            try:
                x = x.item()  # numpy scalars
            except Exception:
                pass
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        return str(x)  # dates, decimals, objects: shown as text

    return {"columns": columns, "rows": [[cell(x) for x in r] for r in rows]}


def _series_list(series: Any) -> list[dict]:
    if series is None or isinstance(series, (str, Mapping)) or not isinstance(series, Iterable):
        raise ValueError("series must be a list of SeriesInfo (name, data) items")
    out = []
    for item in series:
        if isinstance(item, Mapping):
            name, data, labels = item.get("name"), item.get("data"), item.get("labels")
        elif hasattr(item, "name") and hasattr(item, "data"):
            name, data, labels = item.name, item.data, getattr(item, "labels", None)
        else:
            raise ValueError(f"each line plot series needs a name and data, got {item!r}")
        name = _name(name, "a series name", allow_empty=True)
        points = _matrix(data, f"series {name!r} data", columns=2)
        out.append({"name": name, "data": points,
                    "labels": _labels(labels, f"series {name!r} labels", len(points))})
    if not out:
        raise ValueError("report_line_plot needs at least one series")
    return out


def _metrics():
    """The store's metric queries, imported on first use (``import clearml_hooks`` stays free
    of SQLAlchemy)."""
    from clearml_hooks.store import model_metrics

    return model_metrics


# -- the mixin ------------------------------------------------------------------------------------

class ModelReporting:
    """ClearML's reporting methods on models (``report_scalar`` ... ``report_surface``) and the
    readers (``get_reported_scalars``, ``get_reported_single_values``, ``get_reported_plots``,
    ``get_last_scalar_metrics``)."""

    _store: Any
    _id: str

    # -- scalars ----------------------------------------------------------------------------------

    def report_scalar(self, title: str, series: str, value: float, iteration: int) -> None:
        """One point of the scalar series ``title``/``series`` at ``iteration``; reporting the
        same point again replaces its value. NaN and infinities are kept."""
        title = _name(title, "title")
        series = _name(series, "series", allow_empty=True)
        value = _number(value)
        _metrics().add_scalar(self._store.catalog, self._id, title, series, value, _iteration(iteration))

    def report_single_value(self, name: str, value: float) -> None:
        """A single value metric (final accuracy, mAP); the last one reported under a name wins."""
        name = _name(name, "name")
        value = _number(value)
        _metrics().add_scalar(self._store.catalog, self._id, SUMMARY_TITLE, name, value,
                   SINGLE_VALUE_ITERATION)

    # -- plots ------------------------------------------------------------------------------------

    def _report_plot(self, title: Any, series: Any, iteration: Any, kind: str, data: dict) -> None:
        """Store the report as the plotly figure ClearML would make of it (``plot_figures``)."""
        title = _name(title, "title")
        series = _name(series, "series", allow_empty=True)
        iteration = _iteration(iteration, default=0)
        _metrics().add_plot(self._store.catalog, self._id, title, series, iteration, kind,
                 figure_for(kind, title, series, data))

    def report_histogram(self, title: str, series: str, values: Sequence[float],
                         iteration: int | None = None, labels: list[str] | None = None,
                         xlabels: list[str] | None = None, xaxis: str | None = None,
                         yaxis: str | None = None, mode: str | None = None,
                         data_args: dict | None = None, extra_layout: dict | None = None) -> None:
        """An already computed histogram: one bar per value, or one bar group per row of a 2-D
        ``values``; ``labels`` name the rows, ``xlabels`` the bars."""
        data = _numeric(values, "values")
        if not isinstance(data, list):
            raise ValueError("values must be a list or array of numbers")
        rows = data if data and all(isinstance(r, list) for r in data) else [data]
        if any(isinstance(x, list) for r in rows for x in r):
            raise ValueError("values must be 1-D or 2-D")
        mode = mode or "group"
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        self._report_plot(title, series, iteration, "histogram", {
            "values": data, "labels": _labels(labels, "labels"),
            "xlabels": _labels(xlabels, "xlabels"), "xaxis": _optional_text(xaxis, "xaxis"),
            "yaxis": _optional_text(yaxis, "yaxis"), "mode": mode,
            "data_args": _layout(data_args, "data_args"), "extra_layout": _layout(extra_layout)})

    def report_vector(self, title: str, series: str, values: Sequence[float],
                      iteration: int | None = None, labels: list[str] | None = None,
                      xlabels: list[str] | None = None, xaxis: str | None = None,
                      yaxis: str | None = None, mode: str | None = None,
                      extra_layout: dict | None = None) -> None:
        """A vector as a histogram (ClearML stores it as one)."""
        self.report_histogram(title, series, values, iteration, labels=labels, xlabels=xlabels,
                              xaxis=xaxis, yaxis=yaxis, mode=mode, extra_layout=extra_layout)

    def report_table(self, title: str, series: str, iteration: int | None = None,
                     table_plot: Any = None, csv: str | None = None, url: str | None = None,
                     extra_layout: dict | None = None) -> None:
        """A table: a pandas DataFrame, a list of rows (the first is the header), a CSV file
        (``csv``) or a CSV URL (``url``, needs pandas). Stored as ``{"columns", "rows"}``."""
        data = _table(table_plot, csv, url)
        data["extra_layout"] = _layout(extra_layout)
        self._report_plot(title, series, iteration, "table", data)

    def report_line_plot(self, title: str, series: Sequence[Any], xaxis: str, yaxis: str,
                         mode: str = "lines", iteration: int | None = None,
                         reverse_xaxis: bool = False, comment: str | None = None,
                         extra_layout: dict | None = None) -> None:
        """Lines, one per ``SeriesInfo(name, data=[(x, y), ...])`` (or dict); stored under series
        ``""`` as ClearML does."""
        self._report_plot(title, "", iteration, "line", {
            "series": _series_list(series), "xaxis": _optional_text(xaxis, "xaxis"),
            "yaxis": _optional_text(yaxis, "yaxis"), "mode": _name(mode, "mode"),
            "reverse_xaxis": bool(reverse_xaxis), "comment": _optional_text(comment, "comment"),
            "extra_layout": _layout(extra_layout)})

    def report_scatter2d(self, title: str, series: str, scatter: Any,
                         iteration: int | None = None, xaxis: str | None = None,
                         yaxis: str | None = None, labels: list[str] | None = None,
                         mode: str = "line", comment: str | None = None,
                         extra_layout: dict | None = None) -> None:
        """Points ``[(x, y), ...]`` (an ``N x 2`` array); ``labels`` one per point."""
        points = _matrix(scatter, "scatter", columns=2)
        self._report_plot(title, series, iteration, "scatter2d", {
            "points": points, "labels": _labels(labels, "labels", len(points)),
            "xaxis": _optional_text(xaxis, "xaxis"), "yaxis": _optional_text(yaxis, "yaxis"),
            "mode": _name(mode, "mode"), "comment": _optional_text(comment, "comment"),
            "extra_layout": _layout(extra_layout)})

    def report_scatter3d(self, title: str, series: str, scatter: Any,
                         iteration: int | None = None, xaxis: str | None = None,
                         yaxis: str | None = None, zaxis: str | None = None,
                         labels: list[str] | None = None, mode: str = "markers",
                         fill: bool = False, comment: str | None = None,
                         extra_layout: dict | None = None) -> None:
        """Points ``[(x, y, z), ...]`` (an ``N x 3`` array); ``labels`` one per point."""
        points = _matrix(scatter, "scatter", columns=3)
        self._report_plot(title, series, iteration, "scatter3d", {
            "points": points, "labels": _labels(labels, "labels", len(points)),
            "xaxis": _optional_text(xaxis, "xaxis"), "yaxis": _optional_text(yaxis, "yaxis"),
            "zaxis": _optional_text(zaxis, "zaxis"), "mode": _name(mode, "mode"),
            "fill": bool(fill), "comment": _optional_text(comment, "comment"),
            "extra_layout": _layout(extra_layout)})

    def report_confusion_matrix(self, title: str, series: str, matrix: Any,
                                iteration: int | None = None, xaxis: str | None = None,
                                yaxis: str | None = None, xlabels: list[str] | None = None,
                                ylabels: list[str] | None = None, yaxis_reversed: bool = False,
                                comment: str | None = None,
                                extra_layout: dict | None = None) -> None:
        """A heat map (2-D array); ``xlabels`` name the columns, ``ylabels`` the rows."""
        self._matrix_plot("confusion_matrix", title, series, matrix, iteration, xaxis, yaxis,
                          xlabels, ylabels, comment, extra_layout, yaxis_reversed=bool(yaxis_reversed))

    def report_matrix(self, title: str, series: str, matrix: Any, iteration: int | None = None,
                      xaxis: str | None = None, yaxis: str | None = None,
                      xlabels: list[str] | None = None, ylabels: list[str] | None = None,
                      yaxis_reversed: bool = False, extra_layout: dict | None = None) -> None:
        """Same as ``report_confusion_matrix``."""
        self.report_confusion_matrix(title, series, matrix, iteration, xaxis=xaxis, yaxis=yaxis,
                                     xlabels=xlabels, ylabels=ylabels,
                                     yaxis_reversed=yaxis_reversed, extra_layout=extra_layout)

    def report_surface(self, title: str, series: str, matrix: Any, iteration: int | None = None,
                       xaxis: str | None = None, yaxis: str | None = None,
                       zaxis: str | None = None, xlabels: list[str] | None = None,
                       ylabels: list[str] | None = None, camera: Sequence[float] | None = None,
                       comment: str | None = None, extra_layout: dict | None = None) -> None:
        """A 3-D surface of a 2-D array; ``camera`` is an ``(x, y, z)`` position."""
        if camera is not None:
            camera = _numeric(camera, "camera")
            if not isinstance(camera, list) or len(camera) != 3:
                raise ValueError("camera must be three numbers (x, y, z)")
        self._matrix_plot("surface", title, series, matrix, iteration, xaxis, yaxis, xlabels,
                          ylabels, comment, extra_layout, zaxis=_optional_text(zaxis, "zaxis"),
                          camera=camera)

    def _matrix_plot(self, kind: str, title: Any, series: Any, matrix: Any, iteration: Any,
                     xaxis: Any, yaxis: Any, xlabels: Any, ylabels: Any, comment: Any,
                     extra_layout: Any, **extra: Any) -> None:
        data = _matrix(matrix, "matrix")
        self._report_plot(title, series, iteration, kind, {
            "matrix": data, "xaxis": _optional_text(xaxis, "xaxis"),
            "yaxis": _optional_text(yaxis, "yaxis"),
            "xlabels": _labels(xlabels, "xlabels", len(data[0]) if data else 0),
            "ylabels": _labels(ylabels, "ylabels", len(data)),
            "comment": _optional_text(comment, "comment"), "extra_layout": _layout(extra_layout),
            **extra})

    # -- reading ----------------------------------------------------------------------------------

    def get_reported_scalars(self, max_samples: int = 0,
                             x_axis: str = "iter") -> dict[str, dict[str, dict[str, list]]]:
        """``{title: {series: {"name": series, "x": [...], "y": [...]}}}`` as ClearML's
        ``Task.get_reported_scalars``: ``x`` is the iteration (``x_axis="iter"``), the report
        time in ms (``"timestamp"``) or ISO time (``"iso_time"``). ``max_samples`` > 0 averages
        each series down to at most that many points. Single values are not included."""
        if x_axis not in ("iter", "timestamp", "iso_time"):
            raise ValueError("x_axis must be 'iter', 'timestamp' or 'iso_time'")
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 0:
            raise ValueError("max_samples must be a non-negative integer")
        out: dict[str, dict[str, dict[str, list]]] = {}
        entry: dict[str, list] = {}
        key = None
        for title, series, iteration, value, created in _metrics().scalar_rows(
                self._store.catalog, self._id, max_samples):
            if (title, series) != key:  # rows come grouped by (title, series)
                key = (title, series)
                entry = out.setdefault(title, {}).setdefault(
                    series, {"name": series, "x": [], "y": []})
            if x_axis == "iter":
                x: Any = iteration
            elif x_axis == "timestamp":
                x = int(created * 1000)
            else:
                x = _dt.datetime.fromtimestamp(created, tz=_dt.timezone.utc).isoformat(
                    timespec="milliseconds").replace("+00:00", "Z")
            entry["x"].append(x)
            entry["y"].append(float("nan") if value is None else value)
        return out

    def get_all_reported_scalars(self, x_axis: str = "iter") -> dict[str, dict[str, dict[str, list]]]:
        """Every scalar point, not downsampled (ClearML's ``Task.get_all_reported_scalars``)."""
        return self.get_reported_scalars(0, x_axis)

    def get_last_scalar_metrics(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{title: {series: {"last": v, "min": v, "max": v}}}``; "last" is the value at the
        highest iteration. As ClearML's ``Task.get_last_scalar_metrics``."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for r in _metrics().last_scalars(self._store.catalog, self._id):
            out.setdefault(r["title"], {})[r["series"]] = {
                "last": r["last"], "min": r["min"], "max": r["max"]}
        return out

    def get_reported_single_values(self) -> dict[str, float]:
        """``{name: value}`` of every single value reported on the model."""
        return _metrics().single_values(self._store.catalog, self._id)

    def get_reported_single_value(self, name: str) -> float | None:
        return self.get_reported_single_values().get(name)

    def get_reported_plots(self, max_iterations: int | None = None) -> list[dict]:
        """Every plot, oldest iteration first: ``{"metric": title, "variant": series, "iter",
        "timestamp" (ms), "type": "plot", "model": id, "kind", "plot_str", "figure"}``, the keys
        of ClearML's ``Task.get_reported_plots`` (``plot_str``: the plotly figure as JSON) plus
        the figure as a dict. ``max_iterations`` keeps only the plots of the latest that many
        iterations."""
        rows = _metrics().plot_rows(self._store.catalog, self._id)
        if max_iterations is not None:
            if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) \
                    or max_iterations < 1:
                raise ValueError("max_iterations must be a positive integer or None")
            keep = set(sorted({r["iteration"] for r in rows})[-max_iterations:])
            rows = [r for r in rows if r["iteration"] in keep]
        out = []
        for r in rows:
            figure = as_figure(r["kind"], r["title"], r["series"], r["data"])
            out.append({"metric": r["title"], "variant": r["series"], "iter": r["iteration"],
                        "timestamp": int(r["created"] * 1000), "type": "plot", "model": self._id,
                        "kind": r["kind"], "plot_str": json.dumps(figure), "figure": figure})
        return out
