"""Metrics and plots reported on models: every statement that writes or reads them, serving the
SDK (``model_reporting``), the CLI (``models show``) and the UI (charts).

- Scalars: one row per (model, title, series, iteration) in ``model_scalars``; reporting the same
  point again replaces it (an INSERT ... ON CONFLICT DO UPDATE, one statement per report). A
  single value is a scalar titled ``"Summary"`` at iteration ``-2**31``, as ClearML stores it.
- Plots: the plotly figure as JSON in ``model_plots``, under a ``kind``.
- Charts (``chart_series``): at most ``max_points`` points per series, read from the trigger-kept
  roll-up ``model_scalar_buckets`` when a series is long, from the points when it is short. Why
  not ``scalar_rows(max_samples=)``: that averages every point in the database on each call (two
  passes and a grouping over 100k rows: ~0.4 s); a page reads ~1/64 of the rows here. A bucket's
  point is the mean of its finite values at its first iteration (NaN when it has none).
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import Table, and_, case, func, not_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import SqlCatalog, now
from clearml_hooks.store.model_ops import UnknownModel

SUMMARY_TITLE = "Summary"
SINGLE_VALUE_ITERATION = -(2**31)  # where ClearML puts single values

_upserts: dict[tuple[str, bool], Any] = {}


# -- writing ---------------------------------------------------------------------------------------

def _upsert(catalog: SqlCatalog, table: Table, columns: tuple[str, ...]) -> Any:
    """The prepared INSERT ... ON CONFLICT (key) DO UPDATE for this dialect (built once)."""
    key = (table.name, catalog.is_sqlite)
    stmt = _upserts.get(key)
    if stmt is None:
        ins = (sqlite if catalog.is_sqlite else postgresql).insert(table)
        stmt = _upserts[key] = ins.on_conflict_do_update(
            index_elements=[table.c.model_id, table.c.title, table.c.series, table.c.iteration],
            set_={c: ins.excluded[c] for c in columns})
    return stmt


def _write(catalog: SqlCatalog, table: Table, model_id: str, row: dict,
           columns: tuple[str, ...]) -> None:
    row["model_id"] = model_id
    row["created"] = now()
    try:
        with catalog.write() as conn:
            conn.execute(_upsert(catalog, table, columns), row)
    except IntegrityError:  # the foreign key: the model is gone
        raise UnknownModel(model_id) from None


def add_scalar(catalog: SqlCatalog, model_id: str, title: str, series: str, value: float,
               iteration: int) -> None:
    """Store one checked scalar point (replacing the same point reported before)."""
    _write(catalog, s.model_scalars, model_id,
           {"title": title, "series": series, "iteration": iteration,
            "value": value if not math.isnan(value) else None}, ("value", "created"))


def add_plot(catalog: SqlCatalog, model_id: str, title: str, series: str, iteration: int,
             kind: str, data: dict) -> None:
    """Store one plot (replacing the same plot reported before); ``ValueError`` if ``data`` is
    not JSON."""
    try:
        text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"plot {title!r} cannot be stored as JSON: {exc}") from exc
    _write(catalog, s.model_plots, model_id,
           {"title": title, "series": series, "iteration": iteration, "kind": kind, "data": text},
           ("kind", "data", "created"))


# -- reading ---------------------------------------------------------------------------------------

def _value(v: float | None) -> float:
    return float("nan") if v is None else v


def _is_single():
    t = s.model_scalars.c
    return and_(t.title == SUMMARY_TITLE, t.iteration == SINGLE_VALUE_ITERATION)


def scalar_rows(catalog: SqlCatalog, model_id: str, max_samples: int = 0) -> list[tuple]:
    """Every scalar point but single values, by title, series, iteration: (title, series,
    iteration, value, created) tuples (100k points: tuples read ~3x faster than mappings).

    ``max_samples`` > 0: a series longer than that is averaged in the database over
    ``max_samples`` equal ranges of its iterations (NaN ignored, all-NaN stays NaN), each at its
    first iteration, as ClearML's server does; a chart of 10 x 10k points then reads 10 x
    ``max_samples`` rows, not 100k.
    """
    t = s.model_scalars.c
    if not max_samples:
        q = (select(t.title, t.series, t.iteration, t.value, t.created)
             .where(t.model_id == model_id, not_(_is_single()))
             .order_by(t.title, t.series, t.iteration))
    else:
        stats = (select(t.title, t.series, func.min(t.iteration).label("lo"),
                        func.max(t.iteration).label("hi"), func.count().label("n"))
                 .where(t.model_id == model_id, not_(_is_single()))
                 .group_by(t.title, t.series).subquery())
        span = stats.c.hi - stats.c.lo + 1
        window = case((stats.c.n <= max_samples, t.iteration),
                      else_=((t.iteration - stats.c.lo + 1) * max_samples - 1) // span)
        q = (select(t.title, t.series, func.min(t.iteration), func.avg(t.value),
                    func.min(t.created))
             .select_from(stats.join(s.model_scalars, and_(
                 t.model_id == model_id, t.title == stats.c.title, t.series == stats.c.series)))
             .group_by(t.title, t.series, window)
             .order_by(t.title, t.series, func.min(t.iteration)))
    with catalog.read() as conn:
        return [tuple(r) for r in conn.execute(q).all()]


def single_values(catalog: SqlCatalog, model_id: str) -> dict[str, float]:
    """The model's single values (ClearML's ``report_single_value``) by name."""
    t = s.model_scalars.c
    q = select(t.series, t.value).where(t.model_id == model_id, _is_single()).order_by(t.series)
    with catalog.read() as conn:
        return {r[0]: _value(r[1]) for r in conn.execute(q)}


def last_scalars(catalog: SqlCatalog, model_id: str) -> list[dict]:
    """Per scalar series (single values excluded): title, series, iteration (the latest), last,
    min, max and count; one query."""
    t = s.model_scalars
    agg = (select(t.c.title, t.c.series, func.max(t.c.iteration).label("iteration"),
                  func.min(t.c.value).label("min"), func.max(t.c.value).label("max"),
                  func.count().label("count"))
           .where(t.c.model_id == model_id, not_(_is_single()))
           .group_by(t.c.title, t.c.series).subquery())
    q = (select(agg, t.c.value.label("last"))
         .join(t, and_(t.c.model_id == model_id, t.c.title == agg.c.title,
                       t.c.series == agg.c.series, t.c.iteration == agg.c.iteration))
         .order_by(agg.c.title, agg.c.series))
    with catalog.read() as conn:
        return [{**r, "last": _value(r["last"]), "min": _value(r["min"]), "max": _value(r["max"])}
                for r in (dict(m) for m in conn.execute(q).mappings())]


def plot_rows(catalog: SqlCatalog, model_id: str) -> list[dict]:
    """The model's plots (title, series, iteration, kind, data as JSON text, created)."""
    t = s.model_plots.c
    q = (select(t.title, t.series, t.iteration, t.kind, t.data, t.created)
         .where(t.model_id == model_id).order_by(t.iteration, t.title, t.series))
    with catalog.read() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


# -- charts ----------------------------------------------------------------------------------------

def chart_series(catalog: SqlCatalog, model_id: str, max_points: int = 2000) -> dict:
    """Scalar series shaped like the SDK reader's, {title: {series: {"name", "x", "y"}}}."""
    b, p = s.model_scalar_buckets.c, s.model_scalars.c
    out: dict[str, dict[str, dict[str, list]]] = {}
    with catalog.read() as conn:
        sizes = conn.execute(
            select(b.title, b.series, func.sum(b.points)).where(b.model_id == model_id)
            .group_by(b.title, b.series).order_by(b.title, b.series)).all()
        short = [(t, se) for t, se, n in sizes if n <= max_points]
        long = [(t, se) for t, se, n in sizes if n > max_points]
        for t, se in [*short, *long]:
            out.setdefault(t, {})[se] = {"name": se, "x": [], "y": []}
        if short:
            single = and_(p.title == SUMMARY_TITLE, p.iteration == SINGLE_VALUE_ITERATION)
            for t, se, it, v in conn.execute(
                    select(p.title, p.series, p.iteration, p.value)
                    .where(p.model_id == model_id, not_(single),
                           or_(*[and_(p.title == t, p.series == se) for t, se in short]))
                    .order_by(p.title, p.series, p.iteration)):
                entry = out[t][se]
                entry["x"].append(it)
                entry["y"].append(math.nan if v is None else v)
        if long:
            for t, se, it, total, n in conn.execute(
                    select(b.title, b.series, b.first_iteration, b.total, b.n)
                    .where(b.model_id == model_id,
                           or_(*[and_(b.title == t, b.series == se) for t, se in long]))
                    .order_by(b.title, b.series, b.bucket)):
                entry = out[t][se]
                entry["x"].append(it)
                entry["y"].append(total / n if n else math.nan)
    for series in out.values():
        for entry in series.values():
            entry["x"], entry["y"] = _merge(entry["x"], entry["y"], max_points)
    return out


def _merge(xs: list, ys: list, max_points: int) -> tuple[list, list]:
    """Still too many buckets (a very long series): average neighbours down to max_points."""
    n = len(xs)
    if n <= max_points:
        return xs, ys
    out_x, out_y = [], []
    for k in range(max_points):
        lo, hi = k * n // max_points, (k + 1) * n // max_points
        if lo == hi:
            continue
        window = [y for y in ys[lo:hi] if not math.isnan(y)]
        out_x.append(xs[lo])
        out_y.append(sum(window) / len(window) if window else math.nan)
    return out_x, out_y
