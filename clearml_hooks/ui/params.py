"""The table's state in the URL, both ways: query string -> ``TableQuery`` and back, so a link
reproduces the view (``columns=metadata.dataset,metric.loss/val&sort=-metric.loss/val``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from clearml_hooks.store.model_table import (
    DEFAULT_COLUMNS,
    TableError,
    TableQuery,
    parse_column,
    parse_condition,
)

DEFAULT_LIMIT = 50
WHERE_PREFIX = "where."
# every header's sort link and every condition's remove link repeats the whole state, so the
# page grows with the square of these: 2,000 columns in a 24 KB link made a 40 MB page
MAX_COLUMNS = 100
MAX_CONDITIONS = 50


def integer(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise TableError(f"{name} must be an integer, got {value!r}") from None
    if not -(2**63) <= number < 2**63:  # a database integer: beyond it SQL raises (a 500)
        raise TableError(f"{name} is out of range, got {value!r}")
    return number


def table_query(params: Any) -> TableQuery:
    """``params``: Starlette's ``QueryParams`` (a multi-dict with ``getlist``)."""
    columns_text = params.get("columns")
    keys = [c for c in (columns_text.split(",") if columns_text else DEFAULT_COLUMNS) if c]
    if "name" not in keys:
        keys.insert(0, "name")
    where = [parse_condition(k[len(WHERE_PREFIX):], v) for k, v in params.multi_items()
             if k.startswith(WHERE_PREFIX) and v != ""]
    if params.get("where_key"):  # the filter form's free "column / condition" pair
        where.append(parse_condition(params["where_key"].strip(), params.get("where_value", "")))
    if len(keys) > MAX_COLUMNS or len(where) > MAX_CONDITIONS:
        raise TableError(f"at most {MAX_COLUMNS} columns and {MAX_CONDITIONS} conditions")
    sort = params.get("sort") or "-updated"
    parse_column(sort.lstrip("-+"))  # a bad sort is a 400 before any SQL
    return TableQuery(
        columns=[parse_column(k) for k in dict.fromkeys(keys)],
        project=params.get("project") or None, name=params.get("name") or None,
        tags=[t.strip() for v in params.getlist("tag") for t in v.split(",") if t.strip()], framework=params.get("framework") or None,
        published=params.get("published") == "1", archived=params.get("archived") == "1",
        where=where, sort=sort, limit=integer(params.get("limit"), "limit", DEFAULT_LIMIT),
        offset=integer(params.get("offset"), "offset", 0))


def state(q: TableQuery) -> list[tuple[str, str]]:
    """The URL parameters that reproduce ``q`` (defaults left out)."""
    out: list[tuple[str, str]] = []
    keys = [c.key for c in q.columns]
    if keys != list(DEFAULT_COLUMNS):
        out.append(("columns", ",".join(keys)))
    for name, value in (("project", q.project), ("name", q.name), ("framework", q.framework)):
        if value:
            out.append((name, value))
    out += [("tag", t) for t in q.tags]
    if q.published:
        out.append(("published", "1"))
    if q.archived:
        out.append(("archived", "1"))
    out += [(WHERE_PREFIX + c.column.key, ("" if c.op == "=" else c.op) + c.value) for c in q.where]
    if q.sort != "-updated":
        out.append(("sort", q.sort))
    if q.limit != DEFAULT_LIMIT:
        out.append(("limit", str(q.limit)))
    return out


def href(q: TableQuery, *, drop: Sequence[str] = (), **override: Any) -> str:
    """``/?...`` for ``q`` with some parameters replaced (``None`` removes one)."""
    params = [(k, v) for k, v in state(q) if k not in override and k not in drop]
    for key, value in override.items():
        if value is None:
            continue
        params += [(key, str(v)) for v in value] if isinstance(value, list) else [(key, str(value))]
    return "/?" + urlencode(params) if params else "/"


def sort_href(q: TableQuery, column: str) -> str:
    """Clicking a header: sort by it, or flip the direction when it already is the sort."""
    current = q.sort.lstrip("-+")
    new = ("" if q.sort.startswith("-") else "-") + column if current == column else column
    return href(q, sort=new, drop=("offset",))


def safe_next(value: str | None, default: str = "/") -> str:
    """A same-site path to go back to after a POST (never another host)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value

