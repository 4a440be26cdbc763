"""Journal records into catalog rows: idempotent, so recovery, ``sync --force`` and the live
worker can all apply the same record and the catalog ends up the same.

A snapshot moves pending -> ready or pending -> failed, once: nothing here ever changes a
ready or failed snapshot. Blobs are pinned while a snapshot that uses them is being stored, and
garbage collection (``collect_blobs``) decides under the same lock, so dedup and removal agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from clearml_hooks.store import events
from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import SqlCatalog, new_id, now
from clearml_hooks.store.safe_paths import catalog_text

GC_LOCK_KEY = "blob_gc"
NAME_MAX = 512  # models.name


def ingest_task(catalog: SqlCatalog, h: dict[str, Any]) -> None:
    """The task row of a ``task`` record (kept if it exists: a fork's journal repeats it)."""
    with catalog.write() as conn:
        ingest_task_in(catalog, conn, h)


def ingest_task_in(catalog: SqlCatalog, conn: Connection, h: dict[str, Any]) -> None:
    if conn.execute(select(s.tasks.c.id).where(s.tasks.c.id == h["task"])).first():
        return
    project_id = catalog.ensure_project(conn, h["project"])
    conn.execute(s.tasks.insert().values(
        id=h["task"], project_id=project_id, name=h["name"], task_type=h["type"],
        status="in_progress", tags=json.dumps(h.get("tags") or []), comment="", labels="{}",
        host=h.get("host", ""), pid=h.get("pid"), created=h["ts"], updated=h["ts"]))
    events.task_started(conn, h)


def ingest_status_in(conn: Connection, h: dict[str, Any]) -> None:
    conn.execute(update(s.tasks).where(s.tasks.c.id == h["task"]).values(
        status=h["status"], updated=now()))
    events.task_status(conn, h["task"], h["status"])


def ingest_snapshot(catalog: SqlCatalog, h: dict[str, Any], owner: str) -> dict[str, Any]:
    """The pending snapshot row of a ``snap`` record; returns the snapshot's row as it is now.

    A captured save finds or creates its model (one per task and saved path); an
    ``update_weights`` record names its model. A model removed meanwhile: ``state`` "gone".
    """
    with catalog.write() as conn:
        return ingest_snapshot_in(catalog, conn, h, owner)


def ingest_snapshot_in(catalog: SqlCatalog, conn: Connection, h: dict[str, Any],
                       owner: str) -> dict[str, Any]:
    row = conn.execute(select(s.snapshots).where(s.snapshots.c.id == h["rid"])).mappings().first()
    if row is not None:
        return dict(row)
    t = now()
    model_id = h.get("model")
    if model_id:
        model = conn.execute(select(s.models).where(s.models.c.id == model_id)).mappings().first()
        if model is None:
            return {"state": "gone", "model_id": model_id}
        _update_manual_model(conn, dict(model), h, t)
    else:
        model_id = _captured_model(catalog, conn, h, t)
    version = (conn.execute(select(func.max(s.snapshots.c.version)).where(
        s.snapshots.c.model_id == model_id)).scalar() or 0) + 1
    values = {
        "id": h["rid"], "model_id": model_id, "version": version, "iteration": h.get("it"),
        "state": "pending", "kind": h["kind"], "source_path": catalog_text(h.get("src")),
        "source_size": h.get("src_size"), "source_mtime_ns": h.get("src_mtime_ns"),
        "staging": json.dumps(h.get("staging") or []), "owner": owner, "created": h["ts"]}
    conn.execute(s.snapshots.insert(), values)
    files = h.get("files") or []
    if files:
        conn.execute(s.snapshot_files.insert(), [
            {"snapshot_id": h["rid"], "relpath": catalog_text(f["rel"]), "size": f["size"]}
            for f in files])
    return values


def captured_model_name(task_name: str | None, file_name: str) -> str:
    """ClearML's name for a model captured from a framework save: ``"<task name> - <file
    stem>"`` (``WeightsFileHandler.create_output_model``), so ``Model.query_models(model_name=)``
    written for ClearML finds it. The file name stays on the task link and in ``source``."""
    stem = PurePath(file_name).stem or file_name
    name = f"{task_name} - {stem}" if task_name else file_name
    return name[:NAME_MAX]


def _captured_model(catalog: SqlCatalog, conn: Connection, h: dict[str, Any], t: float) -> str:
    """The model of (task, saved path): each save of one path is a new snapshot of it. A new
    one takes ClearML's name and the task's label enumeration; one without labels of its own
    takes them later (labels set on the task after its first save)."""
    m = s.models
    q = select(m.c.id, m.c.labels, m.c.published).where(
        m.c.task_id == h["task"], m.c.source == catalog_text(h["src"]))
    found = conn.execute(q).first()
    task = conn.execute(select(s.tasks.c.project_id, s.tasks.c.name, s.tasks.c.labels).where(
        s.tasks.c.id == h["task"])).first()
    labels = (task.labels if task is not None else None) or "{}"
    if found is not None:
        if found.labels in (None, "", "{}") and labels != "{}" and not found.published:
            conn.execute(update(m).where(m.c.id == found.id).values(labels=labels))
        return found.id
    model_id = new_id()
    try:
        with conn.begin_nested():
            conn.execute(m.insert().values(
                id=model_id, project_id=task.project_id if task is not None else None,
                task_id=h["task"], name=captured_model_name(
                    task.name if task is not None else None, catalog_text(h["name"])),
                source=catalog_text(h["src"]), origin="captured", framework=h.get("fw"), comment="",
                tags="[]", system_tags="[]", labels=labels, is_package=h["kind"] != "file",
                published=False, archived=False, ready=False, iteration=h.get("it"),
                parent_id=_only_input(conn, h["task"]), created=t, updated=t))
            conn.execute(s.task_models.insert().values(
                task_id=h["task"], model_id=model_id, direction="output",
                name=catalog_text(h["name"]),
                created=t))
    except IntegrityError:  # another process of this task saved the same path first
        return conn.execute(q).scalar_one()
    events.emit(conn, "registered", model_id=model_id, origin="captured")
    return model_id


def _only_input(conn: Connection, task_id: str) -> str | None:
    """The model a task loaded, if it loaded exactly one: what its saves were trained from
    (ClearML's parent of an output model)."""
    rows = conn.execute(select(s.task_models.c.model_id).where(
        s.task_models.c.task_id == task_id, s.task_models.c.direction == "input")
        .limit(2)).scalars().all()
    return rows[0] if len(rows) == 1 else None


def adopt_parent(catalog: SqlCatalog, task_id: str, loaded_at: float | None) -> None:
    """A load resolved after the task's saves were ingested (one batch): the captured models
    first saved after that load get it as their parent."""
    if loaded_at is None:
        return
    with catalog.write() as conn:
        parent = _only_input(conn, task_id)
        if parent is None:
            return
        first_save = select(func.min(s.snapshots.c.created)).where(
            s.snapshots.c.model_id == s.models.c.id).scalar_subquery()
        conn.execute(update(s.models).where(
            s.models.c.task_id == task_id, s.models.c.origin == "captured",
            s.models.c.parent_id.is_(None), s.models.c.id != parent,
            first_save >= loaded_at).values(parent_id=parent))


def _update_manual_model(conn: Connection, model: dict, h: dict[str, Any], t: float) -> None:
    from clearml_hooks.store import model_ops

    values: dict[str, Any] = {"updated": t, "iteration": h.get("it")}
    if h.get("fw") and not model["framework"]:
        values["framework"] = h["fw"]
    is_package = h["kind"] != "file" if h.get("package") is None else bool(h["package"])
    if bool(model["is_package"]) != is_package:
        values["is_package"] = is_package
        values["system_tags"] = json.dumps(model_ops.system_tags_with(
            model, model_ops.PACKAGE_TAG, is_package))
    conn.execute(update(s.models).where(s.models.c.id == model["id"]).values(**values))


# -- finishing ------------------------------------------------------------------------------------

def complete_snapshot(catalog: SqlCatalog, snapshot_id: str, *,
                      files: Sequence[tuple[str, str, int]], digest: str, size: int,
                      uri: str) -> bool:
    """pending -> ready (never anything else); the model points at its newest ready snapshot.
    Releases the snapshot's blob pins in the same transaction."""
    with catalog.write() as conn:
        return complete_in(conn, snapshot_id, files=files, digest=digest, size=size, uri=uri)


def complete_in(conn: Connection, snapshot_id: str, *, files: Sequence[tuple[str, str, int]],
                digest: str, size: int, uri: str) -> bool:
    t = now()
    snap = conn.execute(select(s.snapshots).where(s.snapshots.c.id == snapshot_id)).mappings().first()
    conn.execute(delete(s.blob_pins).where(s.blob_pins.c.snapshot_id == snapshot_id))
    if snap is None or snap["state"] != "pending":
        return False
    conn.execute(delete(s.snapshot_files).where(s.snapshot_files.c.snapshot_id == snapshot_id))
    conn.execute(s.snapshot_files.insert(), [
        {"snapshot_id": snapshot_id, "relpath": rel, "sha256": sha, "size": sz}
        for rel, sha, sz in files])
    conn.execute(update(s.snapshots).where(s.snapshots.c.id == snapshot_id).values(
        state="ready", digest=digest, size=size, completed=t, staging=None, error=None))
    model = conn.execute(select(s.models.c.latest_snapshot_id).where(
        s.models.c.id == snap["model_id"])).first()
    newest = True
    if model and model[0]:
        current = conn.execute(select(s.snapshots.c.version).where(
            s.snapshots.c.id == model[0])).scalar()
        newest = current is None or snap["version"] >= current
    if newest:
        conn.execute(update(s.models).where(s.models.c.id == snap["model_id"]).values(
            latest_snapshot_id=snapshot_id, uri=uri, ready=True, updated=t,
            iteration=snap["iteration"]))
    events.snapshot_event(conn, "version_ready", snapshot_id, newest=newest)
    return True


def fail_snapshot(catalog: SqlCatalog, snapshot_id: str, error: str) -> bool:
    """pending -> failed with its reason (a ready snapshot is never touched)."""
    with catalog.write() as conn:
        return fail_in(conn, snapshot_id, error)


def fail_in(conn: Connection, snapshot_id: str, error: str) -> bool:
    error = catalog_text(error) or ""  # it may quote a file name that is not UTF-8
    conn.execute(delete(s.blob_pins).where(s.blob_pins.c.snapshot_id == snapshot_id))
    result = conn.execute(update(s.snapshots).where(
        s.snapshots.c.id == snapshot_id, s.snapshots.c.state == "pending").values(
        state="failed", error=error[:2000], completed=now(), staging=None))
    if result.rowcount == 1:
        events.snapshot_event(conn, "version_failed", snapshot_id, error=error[:500])
    return result.rowcount == 1


def state_in(conn: Connection, snapshot_id: str) -> str | None:
    return conn.execute(select(s.snapshots.c.state).where(
        s.snapshots.c.id == snapshot_id)).scalar()


def snapshot_state(catalog: SqlCatalog, snapshot_id: str) -> str | None:
    with catalog.read() as conn:
        return conn.execute(select(s.snapshots.c.state).where(
            s.snapshots.c.id == snapshot_id)).scalar()


# -- blob pins and garbage collection -------------------------------------------------------------

def _gc_lock(conn: Connection) -> None:
    """Serialize pinning against collection (SQLite's writes are serialized already)."""
    if conn.dialect.name == "sqlite":
        return
    found = conn.execute(select(s.info.c.key).where(s.info.c.key == GC_LOCK_KEY)
                         .with_for_update()).first()
    if found is None:
        try:
            with conn.begin_nested():
                conn.execute(s.info.insert().values(key=GC_LOCK_KEY, value=""))
        except IntegrityError:
            pass
        conn.execute(select(s.info.c.key).where(s.info.c.key == GC_LOCK_KEY).with_for_update())


def pin_blob(catalog: SqlCatalog, sha: str, snapshot_id: str) -> None:
    """Before trusting that a blob exists (dedup): collection keeps pinned blobs."""
    pin_blobs(catalog, [(sha, snapshot_id)])


def pin_blobs(catalog: SqlCatalog, pins: Sequence[tuple[str, str]]) -> None:
    """Pin (sha, snapshot id) pairs in one transaction."""
    if not pins:
        return
    with catalog.write() as conn:
        _gc_lock(conn)
        for sha, snapshot_id in dict.fromkeys(pins):
            exists = conn.execute(select(s.blob_pins.c.sha256).where(
                s.blob_pins.c.sha256 == sha, s.blob_pins.c.snapshot_id == snapshot_id)).first()
            if exists is None:
                conn.execute(s.blob_pins.insert().values(sha256=sha, snapshot_id=snapshot_id,
                                                         created=now()))


def collect_blobs(catalog: SqlCatalog, shas: set[str], delete_blob: Callable[[str], None]) -> \
        list[str]:
    """Delete the blobs among ``shas`` that no snapshot uses and no storing pins. The deletes
    run while the lock is held, so a concurrent dedup either pins first (kept) or sees the
    blob gone (and stores it again)."""
    deleted = []
    if not shas:
        return deleted
    with catalog.write() as conn:
        _gc_lock(conn)
        for sha in sorted(shas):
            used = conn.execute(select(s.snapshot_files.c.snapshot_id).where(
                s.snapshot_files.c.sha256 == sha).limit(1)).first()
            pinned = conn.execute(select(s.blob_pins.c.snapshot_id).where(
                s.blob_pins.c.sha256 == sha).limit(1)).first()
            if used is None and pinned is None:
                delete_blob(sha)
                deleted.append(sha)
    return deleted


# -- loads ----------------------------------------------------------------------------------------

def register_import(catalog: SqlCatalog, *, task_id: str, path: str, kind: str, framework: str,
                    name: str, digest: str, hashed: Sequence[tuple[str, str, int]]) -> str:
    """A loaded file that no snapshot wrote: an imported model pointing at the file itself."""
    uri = "file://" + path
    with catalog.write() as conn:
        project_id = conn.execute(select(s.tasks.c.project_id).where(
            s.tasks.c.id == task_id)).scalar()
        model_id = catalog.insert_model(
            conn, project_id=project_id, task_id=None, name=name, origin="imported",
            framework=framework, uri=uri, ready=True, is_package=kind != "file")
        snapshot_id = new_id()
        conn.execute(s.snapshots.insert().values(
            id=snapshot_id, model_id=model_id, version=1, state="ready", kind=kind,
            source_path=path, digest=digest, size=sum(h[2] for h in hashed),
            created=now(), completed=now()))
        conn.execute(s.snapshot_files.insert(), [
            {"snapshot_id": snapshot_id, "relpath": rel, "sha256": sha, "size": size}
            for rel, sha, size in hashed])
        conn.execute(update(s.models).where(s.models.c.id == model_id).values(
            latest_snapshot_id=snapshot_id))
        events.emit(conn, "registered", model_id=model_id, origin="imported")
    catalog.link_model(task_id, model_id, "input", snapshot_id=snapshot_id)
    return model_id
