"""The catalog: projects, tasks, models, snapshots and lineage, in SQLite or PostgreSQL.

One implementation over SQLAlchemy Core. SQLite runs in WAL mode with a long busy timeout and
``BEGIN IMMEDIATE`` for writes, so many processes can write at once without ever surfacing
"database is locked"; PostgreSQL gets the same code through its own dialect.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from clearml_hooks.store import migrations
from clearml_hooks.store import schema as s

_NO_LOCK = contextlib.nullcontext()
_PG_MAX_SECONDS = (2**31 - 1) // 1000  # the longest timeout PostgreSQL takes in milliseconds

# Held around every use of a database connection. A fork takes it first (see
# ``store._before_fork``), so no thread is inside SQLite (whose internal mutexes a child would
# inherit locked, hanging its first sqlite3.connect) or mid-protocol with PostgreSQL at a fork.
_FORK_LOCK = threading.RLock()


def fork_guard() -> threading.RLock:
    return _FORK_LOCK


def acquire_for_fork(timeout: float) -> bool:
    return _FORK_LOCK.acquire(timeout=timeout)


def release_after_fork(acquired: bool, *, child: bool) -> None:
    global _FORK_LOCK
    if child:
        _FORK_LOCK = threading.RLock()  # the child starts with no thread inside the catalog
    elif acquired:
        _FORK_LOCK.release()


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


class CatalogError(RuntimeError):
    """The catalog could not be opened or is not one of ours."""


class SqlCatalog:
    """Metadata store. ``url`` is a SQLAlchemy URL (``sqlite:////path/catalog.db``,
    ``postgresql+psycopg://user@host/db``)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self.is_sqlite = url.startswith("sqlite")
        self.read_only = False
        self._write_lock = threading.RLock()
        self.engine = self._make_engine(url)
        self._create_schema()

    # -- connection handling ------------------------------------------------------------------

    def _make_engine(self, url: str) -> Engine:
        if not self.is_sqlite:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            # bounded: a server that is down, frozen or never answers fails a call in about
            # ``timeout`` seconds (only the background worker and the API ever wait on it)
            # (whole seconds; in milliseconds they must fit libpq's and PostgreSQL's int32, so
            # a huge timeout is about 24 days, not a connection error)
            seconds = max(1, int(min(self.timeout, _PG_MAX_SECONDS)))
            connect_args = {"connect_timeout": seconds, "keepalives": 1, "keepalives_idle": 10,
                            "keepalives_interval": 5, "keepalives_count": 3,
                            "tcp_user_timeout": seconds * 1000,
                            "options": f"-c statement_timeout={seconds * 1000}"}
            return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4,
                                 pool_timeout=seconds, connect_args=connect_args)
        self.read_only = self._sqlite_read_only()
        if self.read_only:
            # a store on a read-only mount (a registry mounted into a serving or CI container):
            # opened read-only, and never written (see ``write``). Closed cleanly (no WAL index
            # left), SQLite can open a WAL database there only when told nothing changes it
            import sqlite3
            from urllib.parse import quote

            path = self._sqlite_path()
            immutable = "" if os.path.exists(path + "-shm") else "&immutable=1"
            uri = f"file:{quote(path)}?mode=ro{immutable}"
            engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(
                uri, uri=True, timeout=60, check_same_thread=False))
        else:
            engine = create_engine(url, connect_args={"timeout": 60,
                                                      "check_same_thread": False})
        read_only = self.read_only

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout = 60000")
            if not read_only:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection):
            # a write takes the lock up front: no deadlock-prone read->write upgrade
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine

    def _sqlite_path(self) -> str:
        return os.path.abspath(self.url.split("///", 1)[-1])

    def _sqlite_read_only(self) -> bool:
        """A SQLite catalog that exists and cannot be written here (a read-only file, folder
        or mount)."""
        path = self.url.split("///", 1)[-1]
        if not path or path == ":memory:" or "?" in path:
            return False
        return os.path.isfile(self._sqlite_path()) and self._read_only_problem() is not None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it takes the write lock at BEGIN (IMMEDIATE) and waits
        up to a minute for it, so concurrent writers queue instead of failing."""
        if self.read_only:
            raise CatalogError(f"cannot change the catalog {self._read_only_problem()}; it is "
                               "opened read-only: make the changes where the store is "
                               "writable")
        # threads of one process queue on a lock, not in SQLite's busy handler (which sleeps
        # up to 100 ms per collision); other processes still queue in SQLite
        lock = self._write_lock if self.is_sqlite else _NO_LOCK
        with fork_guard(), lock:
            conn = self.engine.connect()
            conn.info["write"] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info["write"] = False
                conn.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with fork_guard(), self.engine.connect() as conn:
            yield conn

    def _create_schema(self) -> None:
        """Bring the catalog to this code's schema revision (one query when it already is)."""
        if self.is_sqlite:
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            migrations.ensure_schema(self)
        except (migrations.SchemaTooNew, migrations.NotOurDatabase) as exc:
            raise CatalogError(str(exc)) from None
        except (DBAPIError, CatalogError) as exc:
            problem = self._read_only_problem()
            if (problem is None and isinstance(exc, DBAPIError) and self.is_sqlite
                    and "not a database" in str(exc.orig)):
                path = os.path.abspath(self.url.split("///", 1)[-1])
                raise CatalogError(
                    f"the catalog {path} is not a SQLite database (damaged, or another "
                    "program's file); it was left unchanged: restore it from a backup, or move it "
                    "aside to start a new catalog") from exc
            if problem is None:
                raise
            cause = exc.orig if isinstance(exc, DBAPIError) else "opened read-only"
            raise CatalogError(
                f"cannot open the catalog {problem}: clearml-hooks writes next to it to open it "
                "(SQLite's WAL journal) and to upgrade a catalog made by an older release; it "
                "was left unchanged. Make it writable by this user, or copy the store to a "
                f"writable folder ({cause or exc})") from exc

    def _read_only_problem(self) -> str | None:
        """What makes a SQLite catalog unwritable (a read-only file or folder), or None."""
        if not self.is_sqlite:
            return None
        path = os.path.abspath(self.url.split("///", 1)[-1])
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return f"{path}: the file is read-only"
        folder = os.path.dirname(path)
        if not os.access(folder, os.W_OK):
            return f"{path}: its folder {folder} is read-only"
        return None

    def close(self) -> None:
        self.engine.dispose()

    # -- projects and tasks -------------------------------------------------------------------

    def ensure_project(self, conn: Connection, name: str) -> str:
        row = conn.execute(select(s.projects.c.id).where(s.projects.c.name == name)).first()
        if row:
            return row[0]
        project_id = new_id()
        try:
            with conn.begin_nested():
                conn.execute(s.projects.insert().values(id=project_id, name=name, created=now()))
        except IntegrityError:
            return conn.execute(select(s.projects.c.id).where(s.projects.c.name == name)).scalar_one()
        return project_id

    def create_task(self, task_id: str, project: str, name: str, task_type: str,
                    tags: Sequence[str] = (), comment: str = "") -> None:
        with self.write() as conn:
            project_id = self.ensure_project(conn, project)
            t = now()
            conn.execute(s.tasks.insert().values(
                id=task_id, project_id=project_id, name=name, task_type=task_type,
                status="in_progress", tags=json.dumps(list(tags)), comment=comment, labels="{}",
                host=os.uname().nodename if hasattr(os, "uname") else "", pid=os.getpid(),
                created=t, updated=t))

    def update_task(self, task_id: str, **values: Any) -> None:
        values["updated"] = now()
        with self.write() as conn:
            conn.execute(update(s.tasks).where(s.tasks.c.id == task_id).values(**values))

    def get_task(self, task_id: str) -> dict | None:
        with self.read() as conn:
            row = conn.execute(
                select(s.tasks, s.projects.c.name.label("project"))
                .join(s.projects, s.projects.c.id == s.tasks.c.project_id)
                .where(s.tasks.c.id == task_id)).mappings().first()
            return dict(row) if row else None

    def list_tasks(self, project: str | None = None, limit: int | None = None) -> list[dict]:
        q = (select(s.tasks, s.projects.c.name.label("project"))
             .join(s.projects, s.projects.c.id == s.tasks.c.project_id)
             .order_by(s.tasks.c.created.desc()))
        if project:
            q = q.where(s.projects.c.name == project)
        if limit:
            q = q.limit(limit)
        with self.read() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def query_task_ids(self, project: str | None = None, name_pattern: str | None = None,
                       tags: Sequence[str] | None = None) -> list[str]:
        """Ids of tasks, newest first (ClearML's ``Task.query_tasks``): ``name_pattern`` is a
        regular expression searched in the name; ``tags`` match any, ``-tag`` excludes."""
        import re

        q = (select(s.tasks.c.id, s.tasks.c.name, s.tasks.c.tags)
             .join(s.projects, s.projects.c.id == s.tasks.c.project_id)
             .order_by(s.tasks.c.created.desc(), s.tasks.c.id.desc()))
        if project is not None:
            q = q.where(s.projects.c.name == project)
        pattern = re.compile(name_pattern) if name_pattern else None
        wanted = [t for t in tags or () if not t.startswith("-")]
        excluded = {t[1:] for t in tags or () if t.startswith("-")}
        with self.read() as conn:
            rows = conn.execute(q).all()
        ids = []
        for task_id, name, tags_json in rows:
            if pattern is not None and not pattern.search(name):
                continue
            have = set(json.loads(tags_json or "[]"))
            if (wanted and not have.intersection(wanted)) or have & excluded:
                continue
            ids.append(task_id)
        return ids

    # -- snapshots (written by store.ingest) ------------------------------------------------------

    def snapshot(self, snapshot_id: str) -> dict | None:
        with self.read() as conn:
            row = conn.execute(select(s.snapshots).where(s.snapshots.c.id == snapshot_id)).mappings().first()
            if row is None:
                return None
            files = conn.execute(select(s.snapshot_files).where(
                s.snapshot_files.c.snapshot_id == snapshot_id)).mappings().all()
            return {**row, "files": [dict(f) for f in files]}

    def snapshots_of(self, model_id: str) -> list[dict]:
        with self.read() as conn:
            return [dict(r) for r in conn.execute(select(s.snapshots).where(
                s.snapshots.c.model_id == model_id).order_by(s.snapshots.c.version)).mappings()]

    def pending_snapshots(self) -> list[dict]:
        with self.read() as conn:
            return [dict(r) for r in conn.execute(select(s.snapshots).where(
                s.snapshots.c.state == "pending").order_by(s.snapshots.c.created)).mappings()]

    # -- lineage --------------------------------------------------------------------------------

    def find_by_source(self, path: str, size: int, mtime_ns: int) -> dict | None:
        """A stored snapshot written at this path with this size and mtime (the path cache)."""
        with self.read() as conn:
            row = conn.execute(select(s.snapshots).where(
                s.snapshots.c.source_path == path, s.snapshots.c.source_size == size,
                s.snapshots.c.source_mtime_ns == mtime_ns, s.snapshots.c.state == "ready")
                .order_by(s.snapshots.c.created.desc()).limit(1)).mappings().first()
            return dict(row) if row else None

    def find_by_digest(self, digest: str) -> dict | None:
        with self.read() as conn:
            row = conn.execute(select(s.snapshots).where(
                s.snapshots.c.digest == digest, s.snapshots.c.state == "ready")
                .order_by(s.snapshots.c.created.desc()).limit(1)).mappings().first()
            return dict(row) if row else None

    def link_model(self, task_id: str, model_id: str, direction: str, name: str | None = None,
                   snapshot_id: str | None = None) -> None:
        with self.write() as conn:
            exists = conn.execute(select(s.task_models.c.model_id).where(
                s.task_models.c.task_id == task_id, s.task_models.c.model_id == model_id,
                s.task_models.c.direction == direction)).first()
            if exists:
                if name:
                    conn.execute(update(s.task_models).where(
                        s.task_models.c.task_id == task_id, s.task_models.c.model_id == model_id,
                        s.task_models.c.direction == direction).values(name=name))
                return
            conn.execute(s.task_models.insert().values(
                task_id=task_id, model_id=model_id, direction=direction, name=name,
                snapshot_id=snapshot_id, created=now()))

    def task_models(self, task_id: str) -> list[dict]:
        with self.read() as conn:
            return [dict(r) for r in conn.execute(
                select(s.task_models.c.model_id, s.task_models.c.direction,
                       s.task_models.c.name.label("link_name"), s.task_models.c.created)
                .where(s.task_models.c.task_id == task_id)
                .order_by(s.task_models.c.created)).mappings()]

    def insert_model(self, conn: Connection, **values: Any) -> str:
        t = now()
        row = {"id": new_id(), "origin": "manual", "comment": "", "tags": "[]",
               "system_tags": "[]", "labels": "{}", "is_package": False, "published": False,
               "archived": False, "ready": False, "created": t, "updated": t}
        row.update(values)
        conn.execute(s.models.insert().values(**row))
        return row["id"]

    def get_model(self, model_id: str) -> dict | None:
        with self.read() as conn:
            row = conn.execute(
                select(s.models, s.projects.c.name.label("project"))
                .select_from(s.models.outerjoin(s.projects, s.projects.c.id == s.models.c.project_id))
                .where(s.models.c.id == model_id)).mappings().first()
            return dict(row) if row else None

