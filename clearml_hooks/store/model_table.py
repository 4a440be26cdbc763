"""The model table's query: any column (built-in, ``metadata.<key>``, ``metric.<title>/<series>``)
shown, filtered and sorted in SQL, on SQLite and PostgreSQL alike.

Why here: the web UI and its JSON API need server-side filter, sort and paging over 100k models;
doing that in Python would read every row. The query runs in two steps: first the ids of one page
(only the sort key and the filters are evaluated for every model), then the cells of those ids
only (one query per kind of cell), so a page costs the same with 3 or 30 columns.

A metric cell is the series' last value: the value at its highest iteration (a single value is
``metric.Summary/<name>``), read from ``model_metric_last`` (kept by triggers, see ``schema``).
Sorting by a metric walks that table's (title, series, value) index, so one page costs about the
same over 1k or 100k models. Models without the value (or with NaN) sort last in both
directions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, and_, case, cast, false, func, not_, or_, select, true
from sqlalchemy.engine import Connection

from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import SqlCatalog
from clearml_hooks.store.model_ops import tag_filter_clause

BUILTIN_COLUMNS = ("name", "project", "framework", "tags", "status", "iteration", "versions",
                   "updated", "created", "task", "comment", "id")
DEFAULT_COLUMNS = ("name", "project", "framework", "tags", "status", "iteration", "versions",
                   "updated", "task")
OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "~")
MAX_LIMIT = 1000
_NUMERIC_TYPES = ("int", "float")
_NOT_NULL = ("name", "updated", "created", "id", "status", "versions", "comment", "tags")


class TableError(ValueError):
    """A column, filter or sort the table cannot apply (the UI answers 400 with the message)."""


@dataclass(frozen=True)
class Column:
    """One table column: ``kind`` is ``builtin``, ``metadata`` or ``metric``."""

    key: str
    kind: str
    name: str  # builtin name, metadata key, or metric title
    series: str = ""

    @property
    def label(self) -> str:
        return self.key


def parse_column(key: str) -> Column:
    """``name`` / ``metadata.dataset`` / ``metric.loss/val`` (title, then the first ``/``)."""
    if key.startswith("metadata."):
        name = key[len("metadata."):]
        if not name:
            raise TableError("metadata column without a key: use metadata.<key>")
        return Column(key, "metadata", name)
    if key.startswith("metric."):
        title, sep, series = key[len("metric."):].partition("/")
        if not title or not sep:
            raise TableError(f"metric column {key!r} must be metric.<title>/<series>")
        return Column(key, "metric", title, series)
    if key in BUILTIN_COLUMNS:
        return Column(key, "builtin", key)
    raise TableError(f"unknown column {key!r}: use one of {', '.join(BUILTIN_COLUMNS)}, "
                     "metadata.<key> or metric.<title>/<series>")


@dataclass(frozen=True)
class Condition:
    """``column op value`` from the URL (``where.metric.loss/val=<0.5``)."""

    column: Column
    op: str
    value: str


def parse_condition(key: str, text: str) -> Condition:
    """The operator leads the value (``<0.5``, ``~resnet``, ``!=v1``); none means ``=``."""
    for op in OPERATORS:
        if text.startswith(op):
            return Condition(parse_column(key), op, text[len(op):])
    return Condition(parse_column(key), "=", text)


@dataclass
class TableQuery:
    """Everything that selects and orders one page of the table."""

    columns: list[Column] = field(default_factory=lambda: [parse_column(c) for c in DEFAULT_COLUMNS])
    project: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    framework: str | None = None
    published: bool = False
    archived: bool = False  # include archived models
    where: list[Condition] = field(default_factory=list)
    sort: str = "-updated"
    limit: int = 50
    offset: int = 0


@dataclass
class TablePage:
    rows: list[dict]
    total: int
    more: bool


# -- SQL expressions per column -------------------------------------------------------------------

_m, _p, _t = s.models, s.projects, s.tasks


def _versions_expr():
    return (select(func.count()).select_from(s.snapshots)
            .where(s.snapshots.c.model_id == _m.c.id).scalar_subquery())


def _builtin_expr(name: str):
    return {
        "name": _m.c.name, "project": _p.c.name, "framework": _m.c.framework,
        "tags": _m.c.tags, "status": case((_m.c.archived == true(), 2),
                                          (_m.c.published == true(), 1), else_=0),
        "iteration": _m.c.iteration, "versions": _versions_expr(), "updated": _m.c.updated,
        "created": _m.c.created, "task": _t.c.name, "comment": _m.c.comment, "id": _m.c.id,
    }[name]


def _metadata_exprs(key: str):
    """(value text, value as a number or NULL) of one metadata key of the current model."""
    md = s.model_metadata.alias()
    base = select(md.c.value).where(md.c.model_id == _m.c.id, md.c.key == key)
    text = base.scalar_subquery()
    number = (select(case((md.c.type.in_(_NUMERIC_TYPES), cast(md.c.value, Float)), else_=None))
              .where(md.c.model_id == _m.c.id, md.c.key == key).scalar_subquery())
    return text, number


def _metric_expr(title: str, series: str):
    last = s.model_metric_last.alias()
    return (select(last.c.value).where(last.c.model_id == _m.c.id, last.c.title == title,
                                       last.c.series == series).scalar_subquery())


def _number(text: str, column: Column) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TableError(f"{column.key}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TableError(f"{column.key}: {text!r} is not a finite number")
    return value


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _compare(expr, op: str, value: Any):
    return {"=": expr == value, "!=": expr != value, "<": expr < value, "<=": expr <= value,
            ">": expr > value, ">=": expr >= value}[op]


def _contains(expr, text: str):
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(expr).like(f"%{escaped.lower()}%", escape="\\")


def _condition_clause(c: Condition):
    col = c.column
    if c.op == "~":
        if col.kind == "metric":
            raise TableError(f"{col.key}: '~' (contains) applies to text columns")
        expr = _metadata_exprs(col.name)[0] if col.kind == "metadata" else _builtin_expr(col.name)
        return _contains(expr, c.value)
    if col.kind == "metric":
        expr = _metric_expr(col.name, col.series)
        clause = _compare(expr, c.op, _number(c.value, col))
        # != keeps models without the metric, as it does for metadata and built-in columns
        return or_(clause, expr.is_(None)) if c.op == "!=" else clause
    if col.kind == "metadata":
        text, number = _metadata_exprs(col.name)
        if c.op in ("=", "!="):
            equal = text == c.value
            value = _finite(c.value)
            if value is not None:  # lr=0.10 finds a float stored as "0.1"
                equal = or_(equal, and_(number.isnot(None), number == value))
            return or_(text.is_(None), not_(equal)) if c.op == "!=" else equal
        return _compare(number, c.op, _number(c.value, col))
    if col.name == "tags":
        if c.op not in ("=", "!="):
            raise TableError("tags: use = (has the tag), != (lacks it) or ~ (contains)")
        return tag_filter_clause([c.value if c.op == "=" else "-" + c.value])
    if col.name == "status":
        states = {"draft": 0, "published": 1, "archived": 2}
        if c.value not in states or c.op not in ("=", "!="):
            raise TableError("status: use status=draft, published or archived (or !=)")
        return _compare(_builtin_expr("status"), c.op, states[c.value])
    expr = _builtin_expr(col.name)
    if col.name in ("iteration", "versions", "updated", "created"):
        return _compare(expr, c.op, _number(c.value, col))
    clause = _compare(expr, c.op, c.value)
    return or_(clause, expr.is_(None)) if c.op == "!=" else clause


def _sort_exprs(sort: str) -> tuple[list, Column]:
    desc = sort.startswith("-")
    column = parse_column(sort.lstrip("-+"))
    if column.kind == "metric":
        keys = [_metric_expr(column.name, column.series)]
    elif column.kind == "metadata":
        text, number = _metadata_exprs(column.name)
        keys = [number, text]  # numbers by value, then text
    elif column.name == "tags":
        keys = [_m.c.tags]
    else:
        keys = [_builtin_expr(column.name)]
    order = []
    for key in keys:  # missing values last, both ways (not-null columns keep their index)
        o = key.desc() if desc else key.asc()
        order.append(o if column.name in _NOT_NULL else o.nulls_last())
    order.append(_m.c.id.desc() if desc else _m.c.id.asc())
    return order, column


def _needs(query: TableQuery, name: str) -> bool:
    cols = [c.column for c in query.where] + [parse_column(query.sort.lstrip("-+"))]
    return any(c.kind == "builtin" and c.name == name for c in cols) or (
        name == "project" and query.project is not None)


def _filtered(query: TableQuery, what):
    """``what`` selected from the models matching the query's filters (joins only if needed)."""
    frm = _m
    if _needs(query, "project"):
        frm = frm.outerjoin(_p, _p.c.id == _m.c.project_id)
    if _needs(query, "task"):
        frm = frm.outerjoin(_t, _t.c.id == _m.c.task_id)
    where = []
    if not query.archived:
        where.append(_m.c.archived == false())
    if query.published:
        where.append(_m.c.published == true())
    if query.project is not None:
        where.append(_p.c.name == query.project)
    if query.name is not None:
        where.append(_m.c.name == query.name)
    if query.framework is not None:
        where.append(_m.c.framework == query.framework)
    if query.tags:
        try:
            clause = tag_filter_clause(query.tags)
        except ValueError as exc:
            raise TableError(str(exc)) from None
        if clause is not None:
            where.append(clause)
    where += [_condition_clause(c) for c in query.where]
    q = select(*what).select_from(frm)
    return q.where(and_(*where)) if where else q


# -- reading a page ---------------------------------------------------------------------------------

def page(catalog: SqlCatalog, query: TableQuery, *, count: bool = True) -> TablePage:
    """One page of the table: rows with a ``cells`` dict per requested column."""
    if not 1 <= query.limit <= MAX_LIMIT:
        raise TableError(f"limit must be between 1 and {MAX_LIMIT}")
    if query.offset < 0:
        raise TableError("offset must be >= 0")
    order, column = _sort_exprs(query.sort)
    with catalog.read() as conn:
        if column.kind == "metric":
            ids = _ids_by_metric(conn, query, column)
        elif column.kind == "metadata":
            ids = _ids_by_metadata(conn, query, column)
        else:
            ids_q = (_filtered(query, [_m.c.id]).order_by(*order).limit(query.limit + 1)
                     .offset(query.offset))
            ids = [r[0] for r in conn.execute(ids_q)]
        more = len(ids) > query.limit
        ids = ids[:query.limit]
        total = (conn.execute(_filtered(query, [func.count()])).scalar() or 0) if count else -1
        rows = _rows(conn, ids, query.columns)
    return TablePage(rows, total, more)


def _ids_by_metric(conn: Connection, query: TableQuery, column: Column) -> list[str]:
    """Up to limit + 1 ids sorted by a metric's last value, read in the order of the
    ``model_metric_last`` index: first the models that have a value (the index walk stops after
    one page), then, if the page reaches past them, those without (by id)."""
    desc = query.sort.startswith("-")
    last = s.model_metric_last
    has_value = and_(last.c.model_id == _m.c.id, last.c.title == column.name,
                     last.c.series == column.series, last.c.value.is_not(None))
    want = query.limit + 1
    with_q = (_filtered(query, [_m.c.id]).join(last, has_value)
              .order_by(last.c.value.desc() if desc else last.c.value.asc(),
                        last.c.model_id.desc() if desc else last.c.model_id.asc())
              .limit(want).offset(query.offset))
    ids = [r[0] for r in conn.execute(with_q)]
    if len(ids) == want:
        return ids
    if ids:
        skip = 0  # the page starts among the models with a value
    else:
        n_with = conn.execute(_filtered(query, [func.count()]).join(last, has_value)).scalar() or 0
        skip = query.offset - n_with
    without = select(last.c.model_id).where(has_value).exists()
    rest_q = (_filtered(query, [_m.c.id]).where(~without)
              .order_by(_m.c.id.desc() if desc else _m.c.id.asc())
              .limit(want - len(ids)).offset(max(skip, 0)))
    return ids + [r[0] for r in conn.execute(rest_q)]


def _ids_by_metadata(conn: Connection, query: TableQuery, column: Column) -> list[str]:
    """Up to limit + 1 ids sorted by a metadata value: numbers (int/float entries) by value,
    then text; one outer join (a correlated lookup per model per sort key is ~5x slower)."""
    desc = query.sort.startswith("-")
    md = s.model_metadata.alias()
    number = case((md.c.type.in_(_NUMERIC_TYPES), cast(md.c.value, Float)), else_=None)
    keys = [number, md.c.value]
    order = [(k.desc() if desc else k.asc()).nulls_last() for k in keys]
    order.append(_m.c.id.desc() if desc else _m.c.id.asc())
    q = (_filtered(query, [_m.c.id])
         .outerjoin(md, and_(md.c.model_id == _m.c.id, md.c.key == column.name))
         .order_by(*order).limit(query.limit + 1).offset(query.offset))
    return [r[0] for r in conn.execute(q)]


def _rows(conn: Connection, ids: Sequence[str], columns: Sequence[Column]) -> list[dict]:
    """The page's rows in ``ids`` order: model fields, project and task name, version count,
    and ``cells`` for the metadata and metric columns."""
    if not ids:
        return []
    q = (select(_m, _p.c.name.label("project"), _t.c.name.label("task_name"))
         .select_from(_m.outerjoin(_p, _p.c.id == _m.c.project_id)
                      .outerjoin(_t, _t.c.id == _m.c.task_id))
         .where(_m.c.id.in_(list(ids))))
    by_id = {r["id"]: {**r, "cells": {}} for r in (dict(x) for x in conn.execute(q).mappings())}
    versions = dict(conn.execute(
        select(s.snapshots.c.model_id, func.count()).where(s.snapshots.c.model_id.in_(list(ids)))
        .group_by(s.snapshots.c.model_id)).all())
    keys = [c.name for c in columns if c.kind == "metadata"]
    if keys:
        md = s.model_metadata.c
        for model_id, key, value, v_type in conn.execute(
                select(md.model_id, md.key, md.value, md.type)
                .where(md.model_id.in_(list(ids)), md.key.in_(keys))):
            by_id[model_id]["cells"]["metadata." + key] = {"value": value, "type": v_type}
    metrics = [c for c in columns if c.kind == "metric"]
    if metrics:
        last = s.model_metric_last.c
        for model_id, title, series, iteration, value in conn.execute(
                select(last.model_id, last.title, last.series, last.iteration, last.value)
                .where(last.model_id.in_(list(ids)),
                       or_(*[and_(last.title == c.name, last.series == c.series)
                             for c in metrics]))):
            by_id[model_id]["cells"][f"metric.{title}/{series}"] = {
                "value": float("nan") if value is None else value, "iteration": iteration}
    out = []
    for model_id in ids:
        row = by_id.get(model_id)
        if row is not None:  # removed between the two steps
            row["versions"] = versions.get(model_id, 0)
            row["tags"] = json.loads(row["tags"])
            row["labels"] = json.loads(row["labels"])
            out.append(row)
    return out


# -- what the column chooser and filter form offer ----------------------------------------------------

def available_columns(catalog: SqlCatalog, ids: Sequence[str], limit: int = 200) -> list[str]:
    """Metadata and metric columns that the models ``ids`` (one page) have, sorted."""
    if not ids:
        return []
    md, sc = s.model_metadata.c, s.model_scalars.c
    with catalog.read() as conn:
        keys = [r[0] for r in conn.execute(
            select(md.key).where(md.model_id.in_(list(ids))).distinct().order_by(md.key)
            .limit(limit))]
        series = conn.execute(
            select(sc.title, sc.series).where(sc.model_id.in_(list(ids))).distinct()
            .order_by(sc.title, sc.series).limit(limit)).all()
    return [f"metadata.{k}" for k in keys] + [f"metric.{t}/{se}" for t, se in series]


def projects(catalog: SqlCatalog, limit: int = 500) -> list[dict]:
    """Projects with their number of (unarchived) models, by name."""
    count = (select(func.count()).select_from(_m)
             .where(_m.c.project_id == _p.c.id, _m.c.archived == false()).scalar_subquery())
    with catalog.read() as conn:
        return [{"name": name, "models": n} for name, n in conn.execute(
            select(_p.c.name, count).order_by(_p.c.name).limit(limit))]


def frameworks(catalog: SqlCatalog, limit: int = 200) -> list[str]:
    with catalog.read() as conn:
        return [r[0] for r in conn.execute(
            select(_m.c.framework).where(_m.c.framework.is_not(None)).distinct()
            .order_by(_m.c.framework).limit(limit))]


def cell_value(row: Mapping[str, Any], column: Column) -> Any:
    """The plain value of one cell of a row from ``page`` (for JSON and templates)."""
    if column.kind != "builtin":
        cell = row["cells"].get(column.key)
        return None if cell is None else cell["value"]
    if column.name == "status":
        return "archived" if row["archived"] else "published" if row["published"] else "draft"
    if column.name == "task":
        return row.get("task_name")
    return row.get(column.name)
