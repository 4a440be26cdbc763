"""One running reader per event consumer (``watch --consumer``, ``TriggerScheduler(consumer=)``).

It lives in the store because its PostgreSQL side is SQL (a session advisory lock)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clearml_hooks.store.catalog import SqlCatalog


class ConsumerLock:
    """One running reader per consumer name. Two watchers started with the same ``--consumer``
    both read from the stored cursor, so each delivered every event (each event twice); now
    the second one waits, as a standby, until the first stops or dies, then resumes from the
    cursor the first one stored. SQLite: ``flock`` on a file beside the catalog; PostgreSQL:
    a session advisory lock on a connection held open. Either is released by the kernel or
    the server when the holder dies (``kill -9`` included)."""

    def __init__(self, catalog: SqlCatalog, consumer: str) -> None:
        self.catalog, self.consumer = catalog, consumer
        self._file: Any = None
        self._conn: Any = None

    def try_acquire(self) -> bool:
        key = hashlib.sha256(f"clearml-hooks consumer {self.consumer}".encode()).digest()
        if self.catalog.is_sqlite:
            import fcntl

            folder = os.path.dirname(os.path.abspath(self.catalog.url.split("///", 1)[-1]))
            f = open(os.path.join(folder, f".consumer-{key.hex()[:32]}.lock"), "a+b")  # noqa: SIM115
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                return False
            self._file = f
            return True
        from sqlalchemy import text

        conn = self.catalog.engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                           {"k": int.from_bytes(key[:8], "big", signed=True)}).scalar()
        conn.commit()
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def acquire(self, stop: threading.Event, echo: Callable[[str], None]) -> bool:
        """Wait until this process holds the consumer (False: stopped while waiting)."""
        told = False
        while not stop.is_set():
            try:
                if self.try_acquire():
                    if told:
                        echo(f"consumer {self.consumer!r} is free now: taking over")
                    return True
            except Exception as exc:  # the catalog is down: like any read, wait and retry
                echo(f"consumer {self.consumer!r}: could not take its lock ({exc}); retrying")
            if not told:
                echo(f"consumer {self.consumer!r} is being run by another watcher: waiting as "
                     "a standby until it stops")
                told = True
            stop.wait(0.5)
        return False

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None
        if self._conn is not None:
            try:
                # close() alone hands the session back to the pool, lock held: end the session
                self._conn.invalidate()
            except Exception:
                pass
            self._conn = None
