"""What the model page, the compare page and the task pages read: one model with its versions,
files and lineage; tasks with their model counts. The CLI's ``models list/show`` and ``tasks
list`` use the same functions, so both print one JSON shape. SQL lives here; they only render.

Every function returns plain JSON-ready dicts (times as ISO strings), which the JSON API returns
as they are and the templates render.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from clearml_hooks.store import model_metrics, model_ops
from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import SqlCatalog
from clearml_hooks.store.model_ops import UnknownModel


class UnknownTask(ValueError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat()


def model_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The public fields of a model row (tags may be a JSON string or a list already)."""
    tags = row["tags"]
    return {
        "id": row["id"], "name": row["name"], "project": row.get("project"),
        "framework": row["framework"], "tags": json.loads(tags) if isinstance(tags, str) else tags,
        "system_tags": json.loads(row["system_tags"]), "published": bool(row["published"]),
        "archived": bool(row["archived"]), "ready": bool(row["ready"]),
        "is_package": bool(row["is_package"]), "iteration": row["iteration"],
        "versions": row.get("versions", 0), "url": row["uri"], "source": row["source"],
        "origin": row["origin"], "comment": row["comment"], "task": row["task_id"],
        "task_name": row.get("task_name"), "parent": row["parent_id"],
        "created": iso(row["created"]), "updated": iso(row["updated"]),
    }


def task_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "name": row["name"], "project": row.get("project"),
        "type": row["task_type"], "status": row["status"], "tags": json.loads(row["tags"] or "[]"),
        "comment": row["comment"], "last_iteration": row["last_iteration"], "host": row["host"],
        "pid": row["pid"], "created": iso(row["created"]), "updated": iso(row["updated"]),
        "output_models": row.get("output_models", 0), "input_models": row.get("input_models", 0),
    }


def model_rows(catalog: SqlCatalog, ids: Sequence[str]) -> list[dict]:
    """Rows (with project, task name and version count) of these models, in this order."""
    if not ids:
        return []
    m, p, t = s.models, s.projects, s.tasks
    q = (select(m, p.c.name.label("project"), t.c.name.label("task_name"))
         .select_from(m.outerjoin(p, p.c.id == m.c.project_id).outerjoin(t, t.c.id == m.c.task_id))
         .where(m.c.id.in_(list(ids))))
    counts = (select(s.snapshots.c.model_id, func.count())
              .where(s.snapshots.c.model_id.in_(list(ids))).group_by(s.snapshots.c.model_id))
    with catalog.read() as conn:
        rows = {r["id"]: dict(r) for r in conn.execute(q).mappings()}
        versions = dict(conn.execute(counts).all())
    out = []
    for model_id in ids:
        row = rows.get(model_id)
        if row is not None:
            row["versions"] = versions.get(model_id, 0)
            out.append(row)
    return out


def _model_with_design(catalog: SqlCatalog, model_id: str) -> tuple[Any, dict[str, Any]]:
    """The model's row and its JSON with labels and design text; ``UnknownModel`` if none."""
    rows = model_rows(catalog, [model_id])
    if not rows:
        raise UnknownModel(model_id)
    row = rows[0]
    info = model_json(row)
    info["labels"] = json.loads(row["labels"])
    info["config_text"] = row["config_text"]
    return row, info


def model_detail(catalog: SqlCatalog, model_id: str) -> dict[str, Any]:
    """Everything the model page shows but metrics: properties, labels, design, metadata,
    versions with their files, and lineage. ``UnknownModel`` for an unknown id."""
    row, info = _model_with_design(catalog, model_id)
    info["config_dict"] = json.loads(row["config_dict"]) if row["config_dict"] else None
    tm, t, p, sn, sf, md = (s.task_models, s.tasks, s.projects, s.snapshots, s.snapshot_files,
                            s.model_metadata)
    with catalog.read() as conn:
        info["metadata"] = {k: {"key": k, "value": v, "type": ty} for k, v, ty in conn.execute(
            select(md.c.key, md.c.value, md.c.type).where(md.c.model_id == model_id)
            .order_by(md.c.key))}
        snapshots = [dict(r) for r in conn.execute(
            select(sn).where(sn.c.model_id == model_id).order_by(sn.c.version)).mappings()]
        files: dict[str, list[dict]] = {}
        if snapshots:
            for f in conn.execute(select(sf).where(sf.c.snapshot_id.in_(
                    [x["id"] for x in snapshots])).order_by(sf.c.relpath)).mappings():
                files.setdefault(f["snapshot_id"], []).append(
                    {"path": f["relpath"], "size": f["size"], "sha256": f["sha256"]})
        links = [dict(r) for r in conn.execute(
            select(tm.c.task_id, tm.c.direction, tm.c.name.label("link_name"), tm.c.created,
                   t.c.name.label("task_name"), t.c.status, p.c.name.label("project"),
                   sn.c.version)
            .select_from(tm.join(t, t.c.id == tm.c.task_id)
                         .outerjoin(p, p.c.id == t.c.project_id)
                         .outerjoin(sn, sn.c.id == tm.c.snapshot_id))
            .where(tm.c.model_id == model_id).order_by(tm.c.created, tm.c.task_id)).mappings()]
        children = [{"id": r[0], "name": r[1]} for r in conn.execute(
            select(s.models.c.id, s.models.c.name).where(s.models.c.parent_id == model_id)
            .order_by(s.models.c.created))]
        creator = None
        if row["task_id"]:
            task = conn.execute(
                select(t.c.id, t.c.name, t.c.status, p.c.name.label("project"))
                .select_from(t.outerjoin(p, p.c.id == t.c.project_id))
                .where(t.c.id == row["task_id"])).mappings().first()
            creator = dict(task) if task else None
        parent = None
        if row["parent_id"]:
            name = conn.execute(select(s.models.c.name).where(
                s.models.c.id == row["parent_id"])).scalar()
            parent = {"id": row["parent_id"], "name": name}
    info["versions_detail"] = [
        {"version": x["version"], "iteration": x["iteration"], "state": x["state"],
         "kind": x["kind"], "digest": x["digest"], "size": x["size"],
         "source": x["source_path"], "created": iso(x["created"]),
         "completed": iso(x["completed"]), "error": x["error"],
         "latest": x["id"] == row["latest_snapshot_id"], "files": files.get(x["id"], [])}
        for x in snapshots]

    def link(r: dict) -> dict:
        return {"task": r["task_id"], "task_name": r["task_name"], "project": r["project"],
                "status": r["status"], "as": r["link_name"], "version": r["version"],
                "when": iso(r["created"])}

    info["lineage"] = {
        "written_by": creator,
        "output_of": [link(r) for r in links
                      if r["direction"] == "output" and r["task_id"] != row["task_id"]],
        "loaded_by": [link(r) for r in links if r["direction"] == "input"],
        "parent": parent,
        "children": children,
    }
    return info


def model_summary(catalog: SqlCatalog, model_id: str) -> dict[str, Any]:
    """One model for ``clearml-hooks models show``: its fields, labels, metadata, snapshots and
    the latest value of each scalar series. ``UnknownModel`` for an unknown id."""
    row, info = _model_with_design(catalog, model_id)
    info["metadata"] = model_ops.get_metadata(catalog, model_id)
    info["snapshots"] = [
        {"version": x["version"], "iteration": x["iteration"], "state": x["state"],
         "size": x["size"], "digest": x["digest"], "created": iso(x["created"]),
         "source": x["source_path"], "error": x["error"]}
        for x in catalog.snapshots_of(model_id)]
    info["scalars"] = [{k: r[k] for k in ("title", "series", "iteration", "last", "min", "max")}
                       for r in model_metrics.last_scalars(catalog, model_id)]
    info["single_values"] = model_metrics.single_values(catalog, model_id)
    return info


def task_model_counts(catalog: SqlCatalog, task_ids: Sequence[str]) -> dict[tuple[str, str], int]:
    """How many models each task wrote and read: ``{(task_id, "output"|"input"): n}``."""
    if not task_ids:
        return {}
    tm = s.task_models
    with catalog.read() as conn:
        return {(task_id, direction): n for task_id, direction, n in conn.execute(
            select(tm.c.task_id, tm.c.direction, func.count())
            .where(tm.c.task_id.in_(list(task_ids)))
            .group_by(tm.c.task_id, tm.c.direction))}


def list_tasks(catalog: SqlCatalog, project: str | None, limit: int,
               offset: int) -> tuple[list[dict], bool]:
    """(tasks of one page, newest first, with their model counts; whether there is more)."""
    t, p = s.tasks, s.projects
    q = (select(t, p.c.name.label("project")).select_from(t.join(p, p.c.id == t.c.project_id))
         .order_by(t.c.created.desc(), t.c.id.desc()).limit(limit + 1).offset(offset))
    if project:
        q = q.where(p.c.name == project)
    with catalog.read() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    by_id = {r["id"]: r for r in rows}
    for (task_id, direction), n in task_model_counts(catalog, list(by_id)).items():
        by_id[task_id][f"{direction}_models"] = n
    return [task_json(r) for r in rows], more


def task_detail(catalog: SqlCatalog, task_id: str) -> dict[str, Any]:
    """A task with the models it wrote and loaded. ``UnknownTask`` for an unknown id."""
    row = catalog.get_task(task_id)
    if row is None:
        raise UnknownTask(task_id)
    links = catalog.task_models(task_id)
    rows = {r["id"]: r for r in model_rows(catalog, list(dict.fromkeys(r["model_id"] for r in links)))}
    info = task_json(row)
    for direction in ("output", "input"):
        info[f"{direction}_models"] = [
            {**model_json(rows[link["model_id"]]), "as": link["link_name"]}
            for link in links if link["direction"] == direction and link["model_id"] in rows]
    return info
