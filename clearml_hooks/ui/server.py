"""The web model table: a read-only HTML UI and JSON API over the model registry.

Standard library only (``http.server.ThreadingHTTPServer``), no JavaScript. Every value that
reaches a page is escaped (model names, tags, metadata and task names come from users), pages
carry a Content-Security-Policy that forbids scripts, and when the server is bound to a loopback
address it answers only requests addressed to a loopback name (DNS-rebinding protection).

Routes (GET and HEAD only)::

    /                       model table; filters project, name, tag (repeatable), framework,
                            published=1, archived=1 (include archived), sort, limit, offset
    /models/<id>            one model: properties, metadata, labels, design, versions, lineage
    /tasks                  task table; project, limit, offset
    /tasks/<id>             one task and the models it wrote and loaded
    /api/models             JSON, same filters as /
    /api/models/<id>        JSON, everything /models/<id> shows
    /api/tasks              JSON, same filters as /tasks
    /api/tasks/<id>         JSON, everything /tasks/<id> shows

Queries go through ``Model.query_models`` (filters, order, paging) and ``Model(...)``; the rows a
page shows are then read from the catalog in one round trip per table, not one per cell.
Importing this module imports no ML framework (nor SQLAlchemy: that is loaded on first request).
"""

from __future__ import annotations

import datetime as _dt
import html
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from clearml_hooks.store import Store

log = logging.getLogger("clearml_hooks.ui")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
SORT_FIELDS = ("updated", "created", "name", "iteration")
_LOOPBACK_NAMES = {"localhost", "localhost.", "127.0.0.1", "::1"}

CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


class HttpError(Exception):
    """An error page / JSON error with this status."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- reading the registry ---------------------------------------------------------------------------

@dataclass
class ModelFilters:
    project: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    framework: str = ""
    published: bool = False
    archived: bool = False
    sort: str = "-updated"
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def params(self, **override: Any) -> dict[str, Any]:
        """Query parameters that reproduce these filters (only the non-default ones)."""
        values = {"project": self.project, "name": self.name, "tag": self.tags,
                  "framework": self.framework, "published": "1" if self.published else "",
                  "archived": "1" if self.archived else "",
                  "sort": "" if self.sort == "-updated" else self.sort,
                  "limit": "" if self.limit == DEFAULT_LIMIT else str(self.limit),
                  "offset": str(self.offset) if self.offset else ""}
        values.update(override)
        return {k: v for k, v in values.items() if v not in ("", [], None)}


def _one(query: Mapping[str, list[str]], key: str) -> str:
    values = query.get(key) or [""]
    return values[-1].strip()


def _flag(query: Mapping[str, list[str]], key: str) -> bool:
    value = _one(query, key).lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise HttpError(HTTPStatus.BAD_REQUEST, f"{key} must be 1 or 0, got {value!r}")


def _int(query: Mapping[str, list[str]], key: str, default: int, lo: int, hi: int | None) -> int:
    raw = _one(query, key)
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{key} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{key} must be {bound}, got {value}")
    return value


def parse_model_filters(query: Mapping[str, list[str]]) -> ModelFilters:
    sort = _one(query, "sort") or "-updated"
    if sort.lstrip("-+") not in SORT_FIELDS:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"sort must be one of {', '.join(SORT_FIELDS)} "
                        f"(prefix '-' for descending), got {sort!r}")
    return ModelFilters(
        project=_one(query, "project"), name=_one(query, "name"),
        tags=[t.strip() for t in query.get("tag", []) if t.strip()],
        framework=_one(query, "framework"), published=_flag(query, "published"),
        archived=_flag(query, "archived"), sort=sort,
        limit=_int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=_int(query, "offset", 0, 0, None))


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat()


def _model_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "project": row.get("project"),
        "framework": row["framework"], "tags": json.loads(row["tags"]),
        "system_tags": json.loads(row["system_tags"]), "published": bool(row["published"]),
        "archived": bool(row["archived"]), "ready": bool(row["ready"]),
        "is_package": bool(row["is_package"]), "iteration": row["iteration"],
        "versions": row.get("versions", 0), "url": row["uri"], "source": row["source"],
        "origin": row["origin"], "comment": row["comment"], "task": row["task_id"],
        "task_name": row.get("task_name"), "parent": row["parent_id"],
        "created": _iso(row["created"]), "updated": _iso(row["updated"]),
    }


def _task_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "project": row.get("project"),
        "type": row["task_type"], "status": row["status"], "tags": json.loads(row["tags"] or "[]"),
        "comment": row["comment"], "last_iteration": row["last_iteration"], "host": row["host"],
        "pid": row["pid"], "created": _iso(row["created"]), "updated": _iso(row["updated"]),
        "output_models": row.get("output_models", 0), "input_models": row.get("input_models", 0),
    }


def _model_rows(store: Store, ids: Sequence[str]) -> list[dict]:
    """The rows (with project, task name and version count) of these models, in this order."""
    if not ids:
        return []
    from sqlalchemy import func, select

    from clearml_hooks.store import schema as s

    m, p, t = s.models, s.projects, s.tasks
    q = (select(m, p.c.name.label("project"), t.c.name.label("task_name"))
         .select_from(m.outerjoin(p, p.c.id == m.c.project_id).outerjoin(t, t.c.id == m.c.task_id))
         .where(m.c.id.in_(list(ids))))
    counts = (select(s.snapshots.c.model_id, func.count())
              .where(s.snapshots.c.model_id.in_(list(ids))).group_by(s.snapshots.c.model_id))
    with store.catalog.read() as conn:
        rows = {r["id"]: dict(r) for r in conn.execute(q).mappings()}
        versions = dict(conn.execute(counts).all())
    out = []
    for model_id in ids:
        row = rows.get(model_id)
        if row is not None:  # removed between the query and now
            row["versions"] = versions.get(model_id, 0)
            out.append(row)
    return out


def list_models(store: Store, filters: ModelFilters) -> tuple[list[dict], bool]:
    """(rows of one page, whether there is a next page)."""
    from clearml_hooks.models import Model

    try:
        found = Model.query_models(
            project_name=filters.project or None, model_name=filters.name or None,
            tags=filters.tags or None, only_published=filters.published,
            include_archived=filters.archived, max_results=filters.limit + 1,
            framework=filters.framework or None, order_by=filters.sort, offset=filters.offset,
            store=store)
    except ValueError as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from exc
    ids = [model.id for model in found]
    return _model_rows(store, ids[:filters.limit]), len(ids) > filters.limit


def _choices(store: Store) -> tuple[list[str], list[str]]:
    """Project names and frameworks in the store, for the filter form's suggestions."""
    from sqlalchemy import select

    from clearml_hooks.store import schema as s

    with store.catalog.read() as conn:
        projects = [r[0] for r in conn.execute(
            select(s.projects.c.name).order_by(s.projects.c.name).limit(500))]
        frameworks = [r[0] for r in conn.execute(
            select(s.models.c.framework).where(s.models.c.framework.is_not(None)).distinct()
            .order_by(s.models.c.framework).limit(200))]
    return projects, frameworks


def _unknown_model(model_id: str) -> HttpError:
    return HttpError(HTTPStatus.NOT_FOUND, f"no model with id {model_id!r}")


def model_detail(store: Store, model_id: str) -> dict[str, Any]:
    """Everything about one model, as the JSON API returns it. 404 for an unknown id."""
    from sqlalchemy import select

    from clearml_hooks.models import Model
    from clearml_hooks.store import schema as s

    try:
        model = Model(model_id, store=store)
    except ValueError:
        raise _unknown_model(model_id) from None
    rows = _model_rows(store, [model.id])
    if not rows:
        raise _unknown_model(model_id)
    row = rows[0]
    info = _model_json(row)
    info["labels"] = json.loads(row["labels"])
    info["config_text"] = row["config_text"]
    info["config_dict"] = json.loads(row["config_dict"]) if row["config_dict"] else None
    info["metadata"] = model.get_all_metadata()
    snapshots = model.snapshots
    tm, t, p, sn, sf = s.task_models, s.tasks, s.projects, s.snapshots, s.snapshot_files
    with store.catalog.read() as conn:
        files: dict[str, list[dict]] = {}
        if snapshots:
            for f in conn.execute(select(sf).where(sf.c.snapshot_id.in_(
                    [x["id"] for x in snapshots])).order_by(sf.c.relpath)).mappings():
                files.setdefault(f["snapshot_id"], []).append(
                    {"path": f["relpath"], "size": f["size"], "sha256": f["sha256"]})
        links = [dict(r) for r in conn.execute(
            select(tm.c.task_id, tm.c.direction, tm.c.name.label("link_name"),
                   tm.c.created, t.c.name.label("task_name"), t.c.status,
                   p.c.name.label("project"), sn.c.version)
            .select_from(tm.join(t, t.c.id == tm.c.task_id)
                         .outerjoin(p, p.c.id == t.c.project_id)
                         .outerjoin(sn, sn.c.id == tm.c.snapshot_id))
            .where(tm.c.model_id == model.id).order_by(tm.c.created, tm.c.task_id)).mappings()]
        children = [dict(r) for r in conn.execute(
            select(s.models.c.id, s.models.c.name).where(s.models.c.parent_id == model.id)
            .order_by(s.models.c.created))]
    info["versions_detail"] = [
        {"version": x["version"], "iteration": x["iteration"], "state": x["state"],
         "kind": x["kind"], "digest": x["digest"], "size": x["size"],
         "source": x["source_path"], "created": _iso(x["created"]),
         "completed": _iso(x["completed"]), "error": x["error"],
         "latest": x["id"] == row["latest_snapshot_id"], "files": files.get(x["id"], [])}
        for x in snapshots]
    creator = None
    if row["task_id"]:
        task = store.catalog.get_task(row["task_id"])
        if task:
            creator = {"id": task["id"], "name": task["name"], "project": task["project"],
                       "status": task["status"]}

    def link(r: dict) -> dict:
        return {"task": r["task_id"], "task_name": r["task_name"], "project": r["project"],
                "status": r["status"], "as": r["link_name"], "version": r["version"],
                "when": _iso(r["created"])}

    parent = None
    if row["parent_id"]:
        parent_row = store.catalog.get_model(row["parent_id"])
        parent = {"id": row["parent_id"], "name": parent_row["name"] if parent_row else None}
    info["lineage"] = {
        "written_by": creator,
        "output_of": [link(r) for r in links
                      if r["direction"] == "output" and r["task_id"] != row["task_id"]],
        "loaded_by": [link(r) for r in links if r["direction"] == "input"],
        "parent": parent,
        "children": children,
    }
    return info


def list_tasks(store: Store, project: str, limit: int, offset: int) -> tuple[list[dict], bool]:
    from sqlalchemy import func, select

    from clearml_hooks.store import schema as s

    t, p, tm = s.tasks, s.projects, s.task_models
    q = (select(t, p.c.name.label("project")).select_from(t.join(p, p.c.id == t.c.project_id))
         .order_by(t.c.created.desc(), t.c.id.desc()).limit(limit + 1).offset(offset))
    if project:
        q = q.where(p.c.name == project)
    with store.catalog.read() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
        more = len(rows) > limit
        rows = rows[:limit]
        if rows:
            for task_id, direction, n in conn.execute(
                    select(tm.c.task_id, tm.c.direction, func.count())
                    .where(tm.c.task_id.in_([r["id"] for r in rows]))
                    .group_by(tm.c.task_id, tm.c.direction)):
                for r in rows:
                    if r["id"] == task_id:
                        r[f"{direction}_models"] = n
    return rows, more


def task_detail(store: Store, task_id: str) -> dict[str, Any]:
    row = store.catalog.get_task(task_id)
    if row is None:
        raise HttpError(HTTPStatus.NOT_FOUND, f"no task with id {task_id!r}")
    links = store.catalog.task_models(task_id)
    rows = {r["id"]: r for r in _model_rows(store, list(dict.fromkeys(r["model_id"] for r in links)))}
    info = _task_json(row)
    for direction in ("output", "input"):
        models = []
        for link in links:
            if link["direction"] == direction and link["model_id"] in rows:
                models.append({**_model_json(rows[link["model_id"]]), "as": link["link_name"]})
        info[f"{direction}_models"] = models
    return info


# -- HTML -------------------------------------------------------------------------------------------

def e(value: Any) -> str:
    """Escaped text for HTML (also safe inside quoted attributes); None is empty."""
    return "" if value is None else html.escape(str(value), quote=True)


def _href(path: str, params: Mapping[str, Any] | None = None) -> str:
    query = urlencode(params or {}, doseq=True)
    return e(path + ("?" + query if query else ""))


def _model_href(model_id: str) -> str:
    return _href("/models/" + quote(model_id, safe=""))


def _task_href(task_id: str) -> str:
    return _href("/tasks/" + quote(task_id, safe=""))


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    when = _dt.datetime.fromtimestamp(ts).astimezone()
    return f'<time datetime="{e(when.isoformat())}">{e(when.strftime("%Y-%m-%d %H:%M:%S"))}</time>'


def _when_iso(iso: str | None) -> str:
    return _when(_dt.datetime.fromisoformat(iso).timestamp()) if iso else ""


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
            return f'<span title="{n} bytes">{e(text)}</span>'
        value /= 1024
    return e(n)


def _tags(tags: Sequence[str], system: bool = False) -> str:
    cls = "tag sys" if system else "tag"
    return " ".join(f'<span class="{cls}">{e(t)}</span>' for t in tags)


def _status(row: Mapping[str, Any]) -> str:
    parts = []
    if row["published"]:
        parts.append('<span class="badge pub">published</span>')
    else:
        parts.append('<span class="badge">draft</span>')
    if row["archived"]:
        parts.append('<span class="badge arch">archived</span>')
    if not row["ready"]:
        parts.append('<span class="badge pend">pending</span>')
    return " ".join(parts)


STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#fafbfc}
header{background:#1d2b3a;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#fff;text-decoration:none}header .brand{font-weight:600;font-size:1.1em}
main{padding:1em 1.2em}h1{font-size:1.3em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #e3e6ea;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600;white-space:nowrap}tr:hover td{background:#f7f9fc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.props{width:auto}table.props th{text-align:right;background:#f6f7f9}
a{color:#0b5cad}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
.tag{display:inline-block;background:#e7f0fb;color:#164a7d;border-radius:3px;padding:0 .4em;margin:1px}
.tag.sys{background:#eee;color:#555}
.badge{display:inline-block;border-radius:3px;padding:0 .4em;background:#eceff3;color:#444;font-size:.9em}
.badge.pub{background:#dff3e4;color:#17603a}.badge.arch{background:#f6e7d2;color:#7a4b06}
.badge.pend{background:#fdf3c4;color:#6b5800}.badge.failed{background:#fbe0e0;color:#8a1c1c}
form.filters{display:flex;flex-wrap:wrap;gap:.6em 1em;align-items:end;background:#fff;
border:1px solid #e3e6ea;padding:.7em;margin-bottom:1em}
form.filters label{display:flex;flex-direction:column;font-size:.85em;color:#555}
form.filters label.check{flex-direction:row;gap:.3em;align-items:center}
.pager{margin:.8em 0;display:flex;gap:1em;align-items:center}.muted{color:#6a737d}
pre{background:#f6f8fa;border:1px solid #e3e6ea;padding:.6em;overflow:auto;max-height:30em}
.error{background:#fbe0e0;border:1px solid #e3b4b4;padding:.8em}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)} - clearml-hooks</title><style>{STYLE}</style></head><body>"
        "<header><a class=\"brand\" href=\"/\">clearml-hooks</a><a href=\"/\">Models</a>"
        "<a href=\"/tasks\">Tasks</a><a href=\"/api/models\">JSON API</a></header>"
        f"<main>{body}</main></body></html>\n")


def _props(items: Sequence[tuple[str, str]]) -> str:
    """A two-column property table; values are already HTML."""
    rows = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in items)
    return f'<table class="props">{rows}</table>'


def _pager(path: str, offset: int, limit: int, shown: int, more: bool,
           params: Mapping[str, Any]) -> str:
    parts = []
    if offset > 0:
        prev = dict(params)
        prev_offset = max(0, offset - limit)
        prev.pop("offset", None)
        if prev_offset:
            prev["offset"] = str(prev_offset)
        parts.append(f'<a rel="prev" href="{_href(path, prev)}">&larr; previous</a>')
    if shown:
        parts.append(f'<span class="muted">{offset + 1}&ndash;{offset + shown}</span>')
    if more:
        parts.append(f'<a rel="next" href="{_href(path, {**params, "offset": str(offset + limit)})}">'
                     "next &rarr;</a>")
    return f'<div class="pager">{"".join(parts)}</div>'


def render_model_table(filters: ModelFilters, rows: list[dict], more: bool,
                       projects: Sequence[str], frameworks: Sequence[str]) -> str:
    tag_inputs = "".join(
        f'<input name="tag" value="{e(t)}" size="12">' for t in [*filters.tags, ""])
    sort_options = "".join(
        f'<option value="{e(v)}"{" selected" if v == filters.sort else ""}>{e(label)}</option>'
        for v, label in (("-updated", "updated, newest"), ("updated", "updated, oldest"),
                         ("-created", "created, newest"), ("created", "created, oldest"),
                         ("name", "name, A-Z"), ("-name", "name, Z-A"),
                         ("-iteration", "iteration, highest"), ("iteration", "iteration, lowest")))
    form = (
        '<form class="filters" method="get" action="/">'
        f'<label>project<input name="project" value="{e(filters.project)}" list="projects"></label>'
        f'<label>name (exact)<input name="name" value="{e(filters.name)}"></label>'
        f'<label>tags (-tag excludes)<span>{tag_inputs}</span></label>'
        f'<label>framework<input name="framework" value="{e(filters.framework)}" list="frameworks"'
        ' size="12"></label>'
        '<label class="check"><input type="checkbox" name="published" value="1"'
        f'{" checked" if filters.published else ""}>published only</label>'
        '<label class="check"><input type="checkbox" name="archived" value="1"'
        f'{" checked" if filters.archived else ""}>include archived</label>'
        f'<label>sort<select name="sort">{sort_options}</select></label>'
        f'<label>per page<input name="limit" type="number" min="1" max="{MAX_LIMIT}" '
        f'value="{filters.limit}" size="5"></label>'
        '<button type="submit">Filter</button> <a href="/">clear</a>'
        '<datalist id="projects">' + "".join(f'<option value="{e(p)}">' for p in projects)
        + '</datalist><datalist id="frameworks">'
        + "".join(f'<option value="{e(f)}">' for f in frameworks) + "</datalist></form>")
    body_rows = []
    for r in rows:
        task = (f'<a href="{_task_href(r["task_id"])}">{e(r.get("task_name") or r["task_id"])}</a>'
                if r["task_id"] else "")
        body_rows.append(
            f'<tr><td><a href="{_model_href(r["id"])}">{e(r["name"])}</a></td>'
            f'<td>{e(r.get("project"))}</td><td>{e(r["framework"])}</td>'
            f'<td>{_tags(json.loads(r["tags"]))}</td><td>{_status(r)}</td>'
            f'<td class="num">{e(r["iteration"])}</td><td class="num">{r["versions"]}</td>'
            f'<td>{_when(r["updated"])}</td><td>{task}</td></tr>')
    params = filters.params()
    if body_rows:
        table = ("<table><thead><tr><th>name</th><th>project</th><th>framework</th><th>tags</th>"
                 "<th>status</th><th>iteration</th><th>versions</th><th>updated</th><th>task</th>"
                 f"</tr></thead><tbody>{''.join(body_rows)}</tbody></table>")
    else:
        table = '<p class="muted">No models match these filters.</p>'
    pager = _pager("/", filters.offset, filters.limit, len(rows), more, params)
    api = _href("/api/models", {k: v for k, v in params.items()})
    return _page("Models", f"<h1>Models</h1>{form}{table}{pager}"
                           f'<p class="muted">As JSON: <a href="{api}">{api}</a></p>')


def _snapshot_state(state: str) -> str:
    cls = {"ready": "pub", "pending": "pend", "failed": "failed"}.get(state, "")
    return f'<span class="badge {cls}">{e(state)}</span>'


def _task_cell(task_id: str | None, name: str | None) -> str:
    if not task_id:
        return ""
    return f'<a href="{_task_href(task_id)}">{e(name or task_id)}</a>'


def render_model(info: dict[str, Any]) -> str:
    lin = info["lineage"]
    creator = lin["written_by"]
    props = [
        ("id", f'<code>{e(info["id"])}</code>'), ("name", e(info["name"])),
        ("project", e(info["project"])), ("framework", e(info["framework"])),
        ("status", _status({"published": info["published"], "archived": info["archived"],
                            "ready": info["ready"]})),
        ("iteration", e(info["iteration"])), ("versions", e(info["versions"])),
        ("tags", _tags(info["tags"])), ("system tags", _tags(info["system_tags"], system=True)),
        ("url", f'<code>{e(info["url"])}</code>' if info["url"] else ""),
        ("saved from", f'<code>{e(info["source"])}</code>' if info["source"] else ""),
        ("package", "yes" if info["is_package"] else "no"), ("origin", e(info["origin"])),
        ("task", _task_cell(creator["id"], creator["name"]) if creator
         else (f'<code>{e(info["task"])}</code>' if info["task"] else "")),
        ("parent model", f'<a href="{_model_href(lin["parent"]["id"])}">'
                         f'{e(lin["parent"]["name"] or lin["parent"]["id"])}</a>'
         if lin["parent"] else ""),
        ("created", _when_iso(info["created"])), ("updated", _when_iso(info["updated"])),
        ("comment", e(info["comment"])),
    ]
    parts = [f'<h1>Model {e(info["name"])}</h1>', _props(props)]

    parts.append("<h2>Metadata</h2>")
    if info["metadata"]:
        rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v.get('value'))}</td>"
                       f"<td class=\"muted\">{e(v.get('type'))}</td></tr>"
                       for k, v in sorted(info["metadata"].items()))
        parts.append(f"<table><thead><tr><th>key</th><th>value</th><th>type</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    else:
        parts.append('<p class="muted">none</p>')

    parts.append("<h2>Labels</h2>")
    if info["labels"]:
        rows = "".join(f"<tr><td>{e(k)}</td><td class=\"num\">{e(v)}</td></tr>"
                       for k, v in sorted(info["labels"].items(), key=lambda kv: kv[1]))
        parts.append(f"<table class=\"props\"><thead><tr><th>label</th><th>id</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    else:
        parts.append('<p class="muted">none</p>')

    if info["config_text"]:
        parts.append(f"<h2>Design</h2><pre>{e(info['config_text'])}</pre>")

    parts.append("<h2>Versions</h2>")
    if info["versions_detail"]:
        rows = []
        for v in reversed(info["versions_detail"]):
            files = v["files"]
            file_cell = ""
            if len(files) > 1 or v["kind"] != "file":
                items = "".join(f"<li><code>{e(f['path'])}</code> {_size(f['size'])}</li>"
                                for f in files)
                file_cell = f"<details><summary>{len(files)} files</summary><ul>{items}</ul></details>"
            digest = (f'<code title="{e(v["digest"])}">{e(v["digest"][:16])}&hellip;</code>'
                      if v["digest"] else "")
            latest = ' <span class="badge pub">latest</span>' if v["latest"] else ""
            error = f'<div class="muted">{e(v["error"])}</div>' if v["error"] else ""
            rows.append(
                f'<tr><td class="num">{e(v["version"])}{latest}</td>'
                f'<td class="num">{e(v["iteration"])}</td>'
                f'<td>{_snapshot_state(v["state"])}{error}</td><td>{digest}</td>'
                f'<td class="num">{_size(v["size"])}</td><td>{file_cell}</td>'
                f'<td>{_when_iso(v["created"])}</td></tr>')
        parts.append("<table><thead><tr><th>version</th><th>iteration</th><th>state</th>"
                     "<th>sha256</th><th>size</th><th>files</th><th>saved</th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
    else:
        parts.append('<p class="muted">No stored versions (registered by URL, or not saved yet).</p>')

    parts.append("<h2>Lineage</h2>")
    rows = []
    if creator:
        rows.append(f"<tr><td>written by</td><td>{_task_cell(creator['id'], creator['name'])}</td>"
                    f"<td>{e(creator['project'])}</td><td>{e(creator['status'])}</td>"
                    "<td></td><td></td><td></td></tr>")
    for role, key in (("also output of", "output_of"), ("loaded by", "loaded_by")):
        for link in lin[key]:
            rows.append(
                f"<tr><td>{e(role)}</td><td>{_task_cell(link['task'], link['task_name'])}</td>"
                f"<td>{e(link['project'])}</td><td>{e(link['status'])}</td>"
                f"<td class=\"num\">{e(link['version'])}</td><td>{e(link['as'])}</td>"
                f"<td>{_when_iso(link['when'])}</td></tr>")
    for child in lin["children"]:
        rows.append(f"<tr><td>trained into model</td><td><a href=\"{_model_href(child['id'])}\">"
                    f"{e(child['name'])}</a></td><td></td><td></td><td></td><td></td><td></td></tr>")
    if rows:
        parts.append("<table><thead><tr><th>role</th><th>task / model</th><th>project</th>"
                     "<th>status</th><th>version</th><th>as</th><th>when</th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
    else:
        parts.append('<p class="muted">No task wrote or loaded this model.</p>')
    api = _href("/api/models/" + quote(info["id"], safe=""))
    parts.append(f'<p class="muted">As JSON: <a href="{api}">{api}</a></p>')
    return _page(f"Model {info['name']}", "".join(parts))


def render_task_table(project: str, limit: int, offset: int, rows: list[dict], more: bool) -> str:
    form = ('<form class="filters" method="get" action="/tasks">'
            f'<label>project<input name="project" value="{e(project)}"></label>'
            '<button type="submit">Filter</button> <a href="/tasks">clear</a></form>')
    body = []
    for r in rows:
        body.append(
            f'<tr><td><a href="{_task_href(r["id"])}">{e(r["name"])}</a></td>'
            f'<td>{e(r["project"])}</td><td>{e(r["status"])}</td><td>{e(r["task_type"])}</td>'
            f'<td class="num">{r.get("output_models", 0)}</td>'
            f'<td class="num">{r.get("input_models", 0)}</td>'
            f'<td class="num">{e(r["last_iteration"])}</td><td>{_when(r["created"])}</td></tr>')
    if body:
        table = ("<table><thead><tr><th>name</th><th>project</th><th>status</th><th>type</th>"
                 "<th>models written</th><th>models loaded</th><th>last iteration</th>"
                 f"<th>created</th></tr></thead><tbody>{''.join(body)}</tbody></table>")
    else:
        table = '<p class="muted">No tasks.</p>'
    params: dict[str, Any] = {"project": project} if project else {}
    if limit != DEFAULT_LIMIT:
        params["limit"] = str(limit)
    return _page("Tasks", f"<h1>Tasks</h1>{form}{table}"
                          + _pager("/tasks", offset, limit, len(rows), more, params))


def _models_table(models: list[dict], with_as: bool) -> str:
    if not models:
        return '<p class="muted">none</p>'
    rows = "".join(
        f'<tr><td><a href="{_model_href(m["id"])}">{e(m["name"])}</a></td>'
        f'<td>{e(m["framework"])}</td><td>{_tags(m["tags"])}</td><td>{_status(m)}</td>'
        f'<td class="num">{e(m["iteration"])}</td><td class="num">{e(m["versions"])}</td>'
        + (f'<td>{e(m["as"])}</td>' if with_as else "") + "</tr>" for m in models)
    return ("<table><thead><tr><th>name</th><th>framework</th><th>tags</th><th>status</th>"
            "<th>iteration</th><th>versions</th>" + ("<th>as</th>" if with_as else "")
            + f"</tr></thead><tbody>{rows}</tbody></table>")


def render_task(info: dict[str, Any]) -> str:
    props = [("id", f'<code>{e(info["id"])}</code>'), ("name", e(info["name"])),
             ("project", e(info["project"])), ("type", e(info["type"])),
             ("status", e(info["status"])), ("tags", _tags(info["tags"])),
             ("last iteration", e(info["last_iteration"])), ("host", e(info["host"])),
             ("pid", e(info["pid"])), ("created", _when_iso(info["created"])),
             ("updated", _when_iso(info["updated"])), ("comment", e(info["comment"]))]
    api = _href("/api/tasks/" + quote(info["id"], safe=""))
    return _page(f"Task {info['name']}", (
        f'<h1>Task {e(info["name"])}</h1>{_props(props)}'
        f'<h2>Models written</h2>{_models_table(info["output_models"], False)}'
        f'<h2>Models loaded</h2>{_models_table(info["input_models"], True)}'
        f'<p class="muted">As JSON: <a href="{api}">{api}</a></p>'))


def render_error(status: HTTPStatus, message: str) -> str:
    return _page(f"{status.value} {status.phrase}",
                 f"<h1>{status.value} {e(status.phrase)}</h1><p class=\"error\">{e(message)}</p>"
                 '<p><a href="/">Back to the model table</a></p>')


# -- HTTP -------------------------------------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a Host header (``[::1]:8080`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Handler(BaseHTTPRequestHandler):
    server: ModelTableServer
    server_version = "clearml-hooks-ui"
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection does not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        log.info("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib's name)
        self._respond(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        url = urlsplit(self.path)
        is_api = url.path == "/api" or url.path.startswith("/api/")
        try:
            self._check_host()
            status, content_type, body = self._route(url.path, parse_qs(url.query))
        except HttpError as exc:
            status, content_type, body = self._error(exc.status, exc.message, is_api)
        except Exception as exc:
            from clearml_hooks.store import StoreUnavailable

            if isinstance(exc, StoreUnavailable):
                status = HTTPStatus.SERVICE_UNAVAILABLE
            else:
                status = HTTPStatus.INTERNAL_SERVER_ERROR
                log.exception("clearml-hooks ui: error serving %s", url.path)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            status, content_type, body = self._error(status, message, is_api)
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _check_host(self) -> None:
        if not self.server.loopback_only:
            return
        header = self.headers.get("Host")
        if header is None:  # HTTP/1.0 without Host: nothing a browser would send
            return
        if not _is_loopback(_host_name(header)):
            raise HttpError(HTTPStatus.MISDIRECTED_REQUEST,
                            "this server is bound to a loopback address and answers only "
                            "requests for localhost / 127.0.0.1")

    @staticmethod
    def _error(status: HTTPStatus, message: str, is_api: bool) -> tuple[int, str, str]:
        if is_api:
            return status, "application/json; charset=utf-8", json.dumps(
                {"error": message, "status": int(status)})
        return status, "text/html; charset=utf-8", render_error(status, message)

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, str]:
        store = self.server.store
        parts = [unquote(p) for p in path.split("/") if p]
        html_type, json_type = "text/html; charset=utf-8", "application/json; charset=utf-8"

        def ok_json(value: Any) -> tuple[int, str, str]:
            return HTTPStatus.OK, json_type, json.dumps(value, indent=1, default=str)

        if parts == []:
            filters = parse_model_filters(query)
            rows, more = list_models(store, filters)
            projects, frameworks = _choices(store)
            return HTTPStatus.OK, html_type, render_model_table(filters, rows, more, projects,
                                                                frameworks)
        if len(parts) == 2 and parts[0] == "models":
            return HTTPStatus.OK, html_type, render_model(model_detail(store, parts[1]))
        if parts == ["tasks"]:
            limit = _int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            offset = _int(query, "offset", 0, 0, None)
            project = _one(query, "project")
            rows, more = list_tasks(store, project, limit, offset)
            return HTTPStatus.OK, html_type, render_task_table(project, limit, offset, rows, more)
        if len(parts) == 2 and parts[0] == "tasks":
            return HTTPStatus.OK, html_type, render_task(task_detail(store, parts[1]))
        if parts == ["api", "models"]:
            filters = parse_model_filters(query)
            rows, more = list_models(store, filters)
            return ok_json({"models": [_model_json(r) for r in rows], "offset": filters.offset,
                            "limit": filters.limit,
                            "next_offset": filters.offset + filters.limit if more else None})
        if len(parts) == 3 and parts[:2] == ["api", "models"]:
            return ok_json(model_detail(store, parts[2]))
        if parts == ["api", "tasks"]:
            limit = _int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            offset = _int(query, "offset", 0, 0, None)
            rows, more = list_tasks(store, _one(query, "project"), limit, offset)
            return ok_json({"tasks": [_task_json(r) for r in rows], "offset": offset,
                            "limit": limit, "next_offset": offset + limit if more else None})
        if len(parts) == 3 and parts[:2] == ["api", "tasks"]:
            return ok_json(task_detail(store, parts[2]))
        raise HttpError(HTTPStatus.NOT_FOUND, f"no page at {path}")


class ModelTableServer(ThreadingHTTPServer):
    """The web model table over one store. ``start()`` serves in a background thread (tests,
    notebooks); ``serve_forever()`` blocks (the CLI). ``stop()`` shuts down and closes the socket."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, store: Store, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.store = store
        self.loopback_only = _is_loopback(host)
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def start(self) -> ModelTableServer:
        self._thread = threading.Thread(target=self.serve_forever, name="clearml-hooks-ui",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self.server_close()

    def __enter__(self) -> ModelTableServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_server(store: Store | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                home: str | None = None) -> ModelTableServer:
    """A server over ``store`` (default: the store ``home`` / the environment / config names).
    Port 0 picks a free port (see ``server.url``)."""
    if store is None:
        from clearml_hooks.config import Settings
        from clearml_hooks.store import store_for

        store = store_for(Settings.resolve(home=home), background=False)
    store.wait()
    return ModelTableServer(store, host, port)
