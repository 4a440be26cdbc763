"""The hard-linked snapshots not stored yet, for the whole process.

Why per process and not per task: a staged hard link shares its inode with the user's file until
the worker has stored it. A task closed offline (or with ``close(timeout=0)``) leaves such links
behind, and the next task in the same process may save the same path: its hooked save must make
a private copy first (``staging.make_private``), exactly as the first task's would have. Kept
here, the links outlive the ``Capturer`` that made them; a record's links go once the worker
resolved it (``on_resolved``, a worker listener).

Every hooked save asks "what pending link could I rewrite?" while anything is pending (an offline
run keeps every link pending), filtered-out saves too: the answer comes from indexes, never from
a scan of all pending links. A save over an existing file rewrites that inode and no other, so
its inode number is the whole question (one ``stat``, one dict lookup); only a folder or a
checkpoint prefix (not a file) needs the sorted paths.
"""

from __future__ import annotations

import bisect
import os
import threading
from typing import Any

SEEN_MAX = 4096  # paths remembered as saved before (for ``again``); forgotten all at once past it


class PendingLinks:
    """User path -> the journal entries of its pending hard-linked snapshots."""

    def __init__(self) -> None:
        # read without the lock on the hot path (is anything pending at all?); changed under it
        self.paths: dict[str, list[dict[str, Any]]] = {}
        self._sorted: list[str] = []  # the keys of ``paths``, sorted: prefixes are ranges
        # inode number -> user paths with a pending link of it; read without the lock too
        self.inodes: dict[int, set[str]] = {}
        self._path_of: dict[str, str] = {}  # snapshot rid -> user path
        self._seen: set[str] = set()  # paths with a link added in this process
        self._lock = threading.Lock()

    def add(self, path: str, entry: dict[str, Any]) -> None:
        """A linked snapshot ``entry`` (with ``rid`` and ``id``) of ``path`` is pending. It is
        flagged ``again`` when this process linked the path before (any task): see
        ``take_saved_again``."""
        with self._lock:
            if path in self._seen:
                entry["again"] = True
            else:
                if len(self._seen) >= SEEN_MAX:
                    self._seen.clear()
                self._seen.add(path)
            entries = self.paths.get(path)
            if entries is None:
                entries = self.paths[path] = []
                bisect.insort(self._sorted, path)
            entries.append(entry)
            self.inodes.setdefault(entry["id"][0], set()).add(path)
            self._path_of[entry["rid"]] = path

    def take_inode(self, inode: int) -> list[tuple[str, list[dict[str, Any]]]]:
        """Remove and return the links of the file a save is about to rewrite in place, by its
        inode: whatever name it is saved under (the path linked, a symlinked folder, a hard link
        of the user's, ``/proc/self/fd/N``). A same number on another filesystem only costs a
        needless private copy."""
        with self._lock:
            return [(p, self._remove(p)) for p in list(self.inodes.get(inode, ()))]

    def take_under(self, absolute: str) -> list[tuple[str, list[dict[str, Any]]]]:
        """Remove and return the links a save of ``absolute`` that is not a regular file may
        rewrite in place: a folder's files, a checkpoint prefix's files (``ckpt.index``)."""
        under = (absolute + os.sep, absolute + ".")
        with self._lock:
            found = []
            i = bisect.bisect_left(self._sorted, absolute)
            while i < len(self._sorted) and self._sorted[i].startswith(absolute):
                p = self._sorted[i]
                if p == absolute or p.startswith(under):
                    found.append(p)
                i += 1
            return [(p, self._remove(p)) for p in found]

    def take_saved_again(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Remove and return the links of paths saved more than once in this process (flagged
        ``again``): a checkpoint saved again and again is the file the next run rewrites in
        place, before anything stores what this one left pending."""
        with self._lock:
            found = [p for p, entries in self.paths.items() if any(e.get("again") for e in entries)]
            return [(p, self._remove(p)) for p in found]

    def resolved(self, rid: str) -> None:
        """The worker stored or failed snapshot ``rid``: its links need no protection."""
        with self._lock:
            path = self._path_of.get(rid)
            entries = self.paths.get(path) if path is not None else None
            if entries is None:
                self._path_of.pop(rid, None)
                return
            kept = [e for e in entries if e["rid"] != rid]
            if not kept:
                self._remove(path)
                return
            self._path_of.pop(rid, None)
            self.paths[path] = kept
            self._unindex_inodes(path, [e for e in entries if e["rid"] == rid], kept)

    def _remove(self, path: str) -> list[dict[str, Any]]:
        """Drop ``path`` and its entries from every index (the lock is held)."""
        entries = self.paths.pop(path)
        i = bisect.bisect_left(self._sorted, path)
        if i < len(self._sorted) and self._sorted[i] == path:
            del self._sorted[i]
        for entry in entries:
            self._path_of.pop(entry["rid"], None)
        self._unindex_inodes(path, entries, [])
        return entries

    def _unindex_inodes(self, path: str, gone: list[dict[str, Any]],
                        kept: list[dict[str, Any]]) -> None:
        still = {e["id"][0] for e in kept}
        for entry in gone:
            inode = entry["id"][0]
            if inode in still:
                continue
            paths = self.inodes.get(inode)
            if paths is not None:
                paths.discard(path)
                if not paths:
                    del self.inodes[inode]

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork


PENDING = PendingLinks()


def on_resolved(record: Any, outcome: str) -> None:
    """Worker listener (one function, so adding it twice is a no-op)."""
    if PENDING.paths and record.header.get("t") == "snap":
        PENDING.resolved(record.rid)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=PENDING._after_fork_in_child)
