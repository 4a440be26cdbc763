"""Scalar series for charts: at most ``max_points`` points per series, read from the trigger-kept
roll-up ``model_scalar_buckets`` when a series is long, from the points when it is short.

Why not ``get_reported_scalars(max_samples=)``: that averages every point in the database on each
call (two passes and a grouping over 100k rows: ~0.4 s); a page reads ~1/64 of the rows here.
The shape is the SDK reader's, ``{title: {series: {"name", "x", "y"}}}``; a bucket's point is
the mean of its finite values at its first iteration (NaN when it has none).
"""

from __future__ import annotations

import math

from sqlalchemy import and_, func, not_, or_, select

from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import SqlCatalog

SUMMARY_TITLE = "Summary"
SINGLE_VALUE_ITERATION = -(2**31)


def chart_series(catalog: SqlCatalog, model_id: str, max_points: int = 2000) -> dict:
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
