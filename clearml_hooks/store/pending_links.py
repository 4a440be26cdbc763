"""The hard-linked snapshots not stored yet, for the whole process.

Why per process and not per task: a staged hard link shares its inode with the user's file until
the worker has stored it. A task closed offline (or with ``close(timeout=0)``) leaves such links
behind, and the next task in the same process may save the same path: its hooked save must make
a private copy first (``staging.make_private``), exactly as the first task's would have. Kept
here, the links outlive the ``Capturer`` that made them; a record's links go once the worker
resolved it (``on_resolved``, a worker listener).
"""

from __future__ import annotations

import os
import threading
from typing import Any


class PendingLinks:
    """User path -> the journal entries of its pending hard-linked snapshots."""

    def __init__(self) -> None:
        # read without the lock on the hot path (is anything pending at all?); changed under it
        self.paths: dict[str, list[dict[str, Any]]] = {}
        self._path_of: dict[str, str] = {}  # snapshot rid -> user path
        self._lock = threading.Lock()

    def add(self, path: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self.paths.setdefault(path, []).append(entry)
            self._path_of[entry["rid"]] = path

    def take_under(self, absolute: str, inode: int | None = None
                   ) -> list[tuple[str, list[dict[str, Any]]]]:
        """Remove and return the links a save of ``absolute`` may rewrite in place: the file
        itself, a folder's files, a checkpoint prefix's files, and any link of ``inode`` (the
        file as it is now: the same file saved under another name, through a symlinked folder
        or a hard link of the user's; a false match only costs a needless private copy)."""
        under = (absolute + os.sep, absolute + ".")
        with self._lock:
            hits = [(p, entries) for p, entries in self.paths.items()
                    if p == absolute or p.startswith(under)
                    or (inode is not None and any(e["id"][0] == inode for e in entries))]
            for path, entries in hits:
                del self.paths[path]
                for entry in entries:
                    self._path_of.pop(entry["rid"], None)
            return hits

    def take_saved_again(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Remove and return the links of paths saved more than once (flagged ``again`` when
        journaled): a checkpoint saved again and again is the file the next run rewrites in
        place, before anything stores what this one left pending."""
        with self._lock:
            hits = [(p, entries) for p, entries in self.paths.items()
                    if any(e.get("again") for e in entries)]
            for path, entries in hits:
                del self.paths[path]
                for entry in entries:
                    self._path_of.pop(entry["rid"], None)
            return hits

    def resolved(self, rid: str) -> None:
        """The worker stored or failed snapshot ``rid``: its links need no protection."""
        with self._lock:
            path = self._path_of.pop(rid, None)
            entries = self.paths.get(path) if path is not None else None
            if entries is None:
                return
            kept = [e for e in entries if e["rid"] != rid]
            if kept:
                self.paths[path] = kept
            else:
                del self.paths[path]

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork


PENDING = PendingLinks()


def on_resolved(record: Any, outcome: str) -> None:
    """Worker listener (one function, so adding it twice is a no-op)."""
    if PENDING.paths and record.header.get("t") == "snap":
        PENDING.resolved(record.rid)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=PENDING._after_fork_in_child)
