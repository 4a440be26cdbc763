"""The registry's event log: every change appends one row in the change's own transaction.

Writers call ``emit(conn, kind, model_id=...)`` inside their ``catalog.write()`` block, so an
event exists exactly when its change was committed. A reader that has handled id N never
later finds a smaller id committed, so a consumer's cursor is just "the last id I handled":
SQLite serializes writers (``BEGIN IMMEDIATE``), so ids increase in commit order. On PostgreSQL
ids are allocated before commit, so a transaction that allocated a smaller id can commit later;
``emit`` holds a *shared* transaction-level advisory lock (writers never wait for each other,
and no lock-order deadlock with row locks is possible), and a reader reads only up to a
horizon taken while it holds the same lock *exclusively* for an instant
(``pg_try_advisory_xact_lock``, never waiting): at that instant no transaction that allocated
an event id is still open, so every id up to the horizon is final.

Readers: ``read_after(catalog, cursor)``; named consumers keep a durable cursor
(``get_cursor`` / ``set_cursor``); ``Waiter`` sleeps until the log may have grown
(PostgreSQL ``LISTEN/NOTIFY``, polling on SQLite). Failed deliveries go to a dead-letter table.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Connection

from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import now

if TYPE_CHECKING:
    from clearml_hooks.store.catalog import SqlCatalog

log = logging.getLogger("clearml_hooks.events")

CHANNEL = "clearml_hooks_events"
_PG_LOCK_KEY = 0x636C6865  # "clhe": the advisory lock that orders event ids on PostgreSQL

# the kinds of events (data fields in parentheses; every model event also carries name,
# project, tags, published, archived, framework and version when the model has them)
KINDS = (
    "registered",        # a model was created (captured, manual or imported)
    "version_ready",     # a snapshot was stored (version, snapshot_id)
    "version_failed",    # a snapshot failed (version, snapshot_id, error)
    "published",
    "archived",
    "unarchived",
    "tags_changed",      # (added, removed)
    "metadata_changed",  # (keys)
    "renamed",           # (old_name)
    "moved",             # to another project (old_project)
    "removed",
    "task_started",      # (task_name, project)
    "task_completed",    # (status); also task_failed, task_stopped, task_status
)
TASK_STATUS_KINDS = {"completed": "task_completed", "closed": "task_completed",
                     "failed": "task_failed", "stopped": "task_stopped"}


@dataclass
class Event:
    id: int
    ts: float
    kind: str
    model_id: str | None
    task_id: str | None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "event": self.kind, "model_id": self.model_id,
                "task_id": self.task_id, **self.data}

    @property
    def version(self) -> int | None:
        return self.data.get("version")


# -- writing (inside the caller's transaction) ------------------------------------------------------

def _order_writers(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": _PG_LOCK_KEY})


def _horizon(conn: Connection) -> int | None:
    """PostgreSQL: the highest id below which every event is final, or None when a writer
    that may hold a smaller id is still open (try again after its commit's NOTIFY)."""
    if not conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY}).scalar():
        conn.rollback()
        return None
    top = conn.execute(select(func.max(s.events.c.id))).scalar()
    conn.rollback()  # releases the lock at once
    return int(top or 0)


def _model_fields(conn: Connection, model_id: str) -> dict[str, Any]:
    m, p, sn = s.models, s.projects, s.snapshots
    row = conn.execute(
        select(m.c.name, p.c.name.label("project"), m.c.tags, m.c.published, m.c.archived,
               m.c.framework, m.c.task_id, sn.c.version)
        .select_from(m.outerjoin(p, p.c.id == m.c.project_id)
                     .outerjoin(sn, sn.c.id == m.c.latest_snapshot_id))
        .where(m.c.id == model_id)).mappings().first()
    if row is None:
        return {}
    out = dict(row)
    out["tags"] = json.loads(out["tags"] or "[]")
    out["published"] = bool(out["published"])
    out["archived"] = bool(out["archived"])
    return out


def emit(conn: Connection, kind: str, *, model_id: str | None = None,
         task_id: str | None = None, **data: Any) -> int:
    """Append one event in ``conn``'s transaction; returns its id. Model events are filled in
    with the model's name, project, tags, flags and newest version as they are now."""
    _order_writers(conn)
    fields: dict[str, Any] = _model_fields(conn, model_id) if model_id else {}
    if task_id is None:
        task_id = fields.get("task_id")
    fields.pop("task_id", None)
    fields.update({k: v for k, v in data.items() if v is not None})
    result = conn.execute(s.events.insert().values(
        ts=now(), kind=kind, model_id=model_id, task_id=task_id,
        data=json.dumps(fields, default=str)))
    event_id = int(result.inserted_primary_key[0])
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": str(event_id)})
    return event_id


def tags_changed(conn: Connection, model_id: str, new_tags: Sequence[str]) -> int | None:
    """Before a model's tags are replaced: an event with what was added and removed (none
    when nothing changes)."""
    old = conn.execute(select(s.models.c.tags).where(s.models.c.id == model_id)).scalar()
    old_tags = json.loads(old or "[]")
    added = [t for t in new_tags if t not in old_tags]
    removed = [t for t in old_tags if t not in new_tags]
    if not added and not removed:
        return None
    return emit(conn, "tags_changed", model_id=model_id, added=added, removed=removed,
                tags=list(new_tags))


def fields_changed(conn: Connection, row: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """After ``update_fields``: a rename is an event (other plain fields are not)."""
    if "name" in values and values["name"] != row["name"]:
        emit(conn, "renamed", model_id=row["id"], old_name=row["name"])


def snapshot_event(conn: Connection, kind: str, snapshot_id: str, **data: Any) -> int | None:
    """A version event (``version_ready`` / ``version_failed``) for a snapshot."""
    snap = conn.execute(select(s.snapshots.c.model_id, s.snapshots.c.version).where(
        s.snapshots.c.id == snapshot_id)).first()
    if snap is None:
        return None
    return emit(conn, kind, model_id=snap[0], version=snap[1], snapshot_id=snapshot_id, **data)


def task_started(conn: Connection, h: Mapping[str, Any]) -> int:
    return emit(conn, "task_started", task_id=h["task"], task_name=h.get("name"),
                project=h.get("project"))


def task_status(conn: Connection, task_id: str, status: str) -> int | None:
    if status in ("in_progress", "created", "queued"):
        return None
    return emit(conn, TASK_STATUS_KINDS.get(status, "task_status"), task_id=task_id,
                status=status)


# -- reading ----------------------------------------------------------------------------------------

def _event(row: Any) -> Event:
    return Event(id=int(row.id), ts=row.ts, kind=row.kind, model_id=row.model_id,
                 task_id=row.task_id, data=json.loads(row.data or "{}"))


def last_id(catalog: SqlCatalog) -> int:
    """The newest event's id (on PostgreSQL: the newest final one)."""
    with catalog.read() as conn:
        if conn.dialect.name == "postgresql":
            for _ in range(200):
                top = _horizon(conn)
                if top is not None:
                    return top
                time.sleep(0.01)
        return int(conn.execute(select(func.max(s.events.c.id))).scalar() or 0)


def read_after(catalog: SqlCatalog, cursor: int, limit: int = 500,
               kinds: Iterable[str] | None = None) -> list[Event]:
    q = select(s.events).where(s.events.c.id > cursor).order_by(s.events.c.id).limit(limit)
    if kinds is not None:
        q = q.where(s.events.c.kind.in_(list(kinds)))
    with catalog.read() as conn:
        if conn.dialect.name == "postgresql":
            top = _horizon(conn)
            if top is None or top <= cursor:
                return []
            q = q.where(s.events.c.id <= top)
        return [_event(r) for r in conn.execute(q)]


def retrying(what: str, fn: Any, stop: threading.Event, *, first_delay: float = 0.5,
             max_delay: float = 15.0) -> Any:
    """``fn()``, called again while it raises (the catalog is down or restarting), waiting
    ``first_delay``, 2x, 4x ... at most ``max_delay`` seconds. It is always tried once; after
    a failure, None once ``stop`` is set. The first failure and the recovery are logged, so a
    consumer survives a database restart."""
    delay = first_delay
    failed = 0
    while True:
        try:
            result = fn()
        except Exception as exc:
            failed += 1
            if failed == 1:
                log.warning("clearml-hooks: cannot %s (%s: %s); retrying", what,
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            if stop.wait(delay):
                return None
            delay = min(delay * 2, max_delay)
            continue
        if failed:
            log.warning("clearml-hooks: %s works again (after %d failed tries)", what, failed)
        return result


def get_cursor(catalog: SqlCatalog, consumer: str) -> int | None:
    with catalog.read() as conn:
        value = conn.execute(select(s.event_consumers.c.cursor).where(
            s.event_consumers.c.name == consumer)).scalar()
    return None if value is None else int(value)


def set_cursor(catalog: SqlCatalog, consumer: str, cursor: int) -> None:
    """Store a consumer's position (never moves it backwards)."""
    with catalog.write() as conn:
        found = conn.execute(select(s.event_consumers.c.cursor).where(
            s.event_consumers.c.name == consumer)).first()
        if found is None:
            conn.execute(s.event_consumers.insert().values(name=consumer, cursor=cursor,
                                                           updated=now()))
        elif cursor > found[0]:
            conn.execute(update(s.event_consumers).where(
                s.event_consumers.c.name == consumer).values(cursor=cursor, updated=now()))


def start_cursor(catalog: SqlCatalog, consumer: str | None, from_start: bool) -> int:
    """Where a consumer resumes: its stored cursor; a new one starts at the end of the log
    (or before the first event with ``from_start``) and is stored at once."""
    if consumer:
        stored = get_cursor(catalog, consumer)
        if stored is not None:
            return stored
    cursor = 0 if from_start else last_id(catalog)
    if consumer:
        with catalog.write() as conn:
            found = conn.execute(select(s.event_consumers.c.cursor).where(
                s.event_consumers.c.name == consumer)).first()
            if found is not None:
                return int(found[0])
            conn.execute(s.event_consumers.insert().values(name=consumer, cursor=cursor,
                                                           updated=now()))
    return cursor


def add_dead_letter(catalog: SqlCatalog, consumer: str, event: Event, target: str,
                    attempts: int, error: str, body: str) -> None:
    with catalog.write() as conn:
        conn.execute(s.event_dead_letters.insert().values(
            consumer=consumer, event_id=event.id, target=target, attempts=attempts,
            error=error[:2000], body=body, created=now()))


def dead_letters(catalog: SqlCatalog, consumer: str | None = None) -> list[dict[str, Any]]:
    q = select(s.event_dead_letters).order_by(s.event_dead_letters.c.id)
    if consumer is not None:
        q = q.where(s.event_dead_letters.c.consumer == consumer)
    with catalog.read() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


# -- waiting ----------------------------------------------------------------------------------------

class Waiter:
    """Sleeps until the log may have grown or ``timeout`` passes.

    PostgreSQL: a dedicated connection LISTENs on the channel that ``emit`` notifies at commit
    (a lost connection falls back to polling and reconnects). SQLite: polls ``max(id)`` every
    ``poll`` seconds (at most 1 s).
    """

    def __init__(self, catalog: SqlCatalog, poll: float = 0.2,
                 stop: threading.Event | None = None) -> None:
        self.catalog = catalog
        self.poll = min(max(poll, 0.01), 1.0)
        self._listen: Any = None
        self._stop = stop or threading.Event()

    @property
    def uses_notify(self) -> bool:
        return not self.catalog.is_sqlite

    def _connect(self) -> Any:
        import psycopg

        url = self.catalog.engine.url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def wait(self, timeout: float, after: int | None = None) -> None:
        """Return when an event newer than ``after`` may exist, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if self.uses_notify:
            try:
                if self._listen is None:
                    self._listen = self._connect()
                    return  # events may have come while we were not listening
                self._wait_notify(max(0.0, deadline - time.monotonic()))
                return
            except Exception as exc:  # server gone: poll until it is back
                log.warning("clearml-hooks: event LISTEN connection lost (%s); polling", exc)
                self.close()
        while not self._stop.is_set():
            try:
                if after is not None and last_id(self.catalog) > after:
                    return
            except Exception:  # the catalog is down: the caller's read says so and waits
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(self.poll, remaining))

    def _wait_notify(self, timeout: float) -> None:
        """Block until a NOTIFY arrives or ``timeout`` passes. Works on every psycopg 3
        (``notifies(timeout=...)`` is 3.2+): wait for the socket to be readable, then let
        psycopg read what came (notifications, or the error of a closed connection)."""
        import select

        conn = self._listen
        if conn.pgconn.notifies() is not None:  # already read with an earlier result
            return
        readable, _, _ = select.select([conn.fileno()], [], [], timeout)
        if readable:
            conn.pgconn.consume_input()  # raises when the server closed the connection
            while conn.pgconn.notifies() is not None:
                pass
            if conn.pgconn.status != 0:  # psycopg.pq.ConnStatus.OK
                raise ConnectionError("the LISTEN connection is closed")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        conn, self._listen = self._listen, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def follow(catalog: SqlCatalog, cursor: int, *, stop: threading.Event,
           max_wait: float = 1.0, poll: float = 0.2, batch: int = 500) -> Iterable[Event]:
    """Yield events after ``cursor`` as they are committed, until ``stop`` is set."""
    waiter = Waiter(catalog, poll=poll, stop=stop)
    try:
        while not stop.is_set():
            events = retrying("read the event log", lambda c=cursor: read_after(
                catalog, c, limit=batch), stop) or []
            for event in events:
                yield event
                cursor = event.id
                if stop.is_set():
                    return
            if len(events) < batch:
                waiter.wait(max_wait, after=cursor)
    finally:
        waiter.close()
