"""The per-process capture journal: what makes a snapshot durable without the catalog.

A hooked save appends one record here before it returns (one ``write`` to a file this process
already holds open), so a kill -9, a frozen PostgreSQL or a full object store never loses it:
the background worker ingests the records into the catalog and stores the bytes, and marks
each one done. A journal whose process died is finished by the next process that opens the
store, or by ``clearml-hooks sync``.

Layout: ``<home>/journal/<owner>/`` holds ``lock`` (``flock``-ed by the owner for its whole
life, so "is the owner alive?" is the kernel's answer, kill -9 included) and segments
``000001.log``, ... Each record is one JSON header line, then ``n`` payload bytes (the bytes of
a small saved file, inline). A torn tail (power loss mid-write) ends the reading.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from clearml_hooks.store import forks

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: liveness falls back to the pid check
    fcntl = None  # type: ignore[assignment]

SEGMENT_MAX = 16 << 20  # start a new segment past this size, so finished ones can be removed
WORK = frozenset({"task", "snap", "load", "status"})


class Record:
    """One journal record: its header, and where its payload lies."""

    __slots__ = ("header", "segment", "offset", "length")

    def __init__(self, header: dict[str, Any], segment: str, offset: int, length: int) -> None:
        self.header, self.segment = header, segment
        self.offset, self.length = offset, length  # of the payload

    @property
    def rid(self) -> str:
        return self.header["rid"]

    def payload(self, start: int = 0, length: int | None = None) -> bytes:
        length = self.length - start if length is None else length
        with open(self.segment, "rb") as f:
            f.seek(self.offset + start)
            data = f.read(length)
        if len(data) != length:
            raise OSError(f"journal segment {self.segment} is truncated")
        return data


class _Segment:
    __slots__ = ("path", "outstanding")

    def __init__(self, path: str) -> None:
        self.path = path
        self.outstanding: set[str] = set()


_encode_str = json.JSONEncoder(separators=(",", ":")).encode


def _encode(header: dict[str, Any]) -> bytes:
    return _encode_str(header).encode() + b"\n"


def new_id() -> str:
    """A record id, unique across processes: a random per-process prefix and a counter (no
    ``getrandom`` call per save)."""
    return f"{_id_prefix}{next(_id_counter):016x}"


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = os.urandom(8).hex(), itertools.count()


_id_prefix, _id_counter = "", itertools.count()
_new_id_prefix()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_prefix)  # a forked child never reuses our ids


class Journal:
    """This process's journal. Appends come from the training thread and the worker."""

    def __init__(self, root: str | list[str], owner: str, *, fsync: bool = False) -> None:
        # the store's journal folder first; if its disk is full or read-only, the fallback
        # (on another disk, see ``Store.journal_roots``), so a save is still journaled
        self.roots = [root] if isinstance(root, str) else list(root)
        self._root_index = 0
        self.root = self.roots[0]
        self.owner = owner
        self.dir = os.path.join(self.root, owner)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._other_locks: list[int] = []  # locks of folders left for a fallback root
        self._dirs: list[str] = []
        self._offset = 0
        self._segments: list[_Segment] = []
        self._pid = os.getpid()
        self._generation = 0  # a journal closed and used again gets a new folder

    @property
    def name(self) -> str:
        """The folder name: the owner, plus a generation after a close (staging uses it too)."""
        return os.path.basename(self.dir)

    # -- writing --------------------------------------------------------------------------------

    def _open(self) -> None:
        while True:
            try:
                if self._lock_fd is None:
                    self._lock_fd = self._create_locked_dir()
                    self._dirs.append(self.dir)
                self._open_segment()
                return
            except OSError:
                if not self._next_root():
                    raise

    def _next_root(self) -> bool:
        """Move on to the next root (its disk is full, read-only, ...). False at the last."""
        if self._root_index + 1 >= len(self.roots):
            return False
        if self._lock_fd is not None:
            self._other_locks.append(self._lock_fd)  # keep it: records there are ours
            self._lock_fd = None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        self._root_index += 1
        self.root = self.roots[self._root_index]
        self.dir = os.path.join(self.root, os.path.basename(self.dir))
        return True

    def _open_segment(self) -> None:
        number = len(self._segments) + 1
        path = os.path.join(self.dir, f"{number:06d}.log")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._offset = os.fstat(self._fd).st_size
        self._segments.append(_Segment(path))

    def _create_locked_dir(self) -> int:
        """The folder appears under its name already locked (made under a hidden name, then
        renamed), so a recovering process never takes a journal being born for a dead one."""
        os.makedirs(self.root, exist_ok=True)
        if os.path.isdir(self.dir):
            fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        tmp = os.path.join(self.root, f".new-{os.path.basename(self.dir)}-{os.urandom(4).hex()}")
        os.makedirs(tmp)
        fd = os.open(os.path.join(tmp, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(tmp, self.dir)
        return fd

    def append(self, header: dict[str, Any], payload: bytes = b"", *,
               line: bytes | None = None) -> Record:
        """Write one record (one ``write`` call); durable against a kill -9 when it returns.

        ``line``: the header already encoded (with ``n`` and the newline), by a caller that
        encodes faster than ``json.dumps`` (``capture.InlineLines``); it must decode to
        ``header``."""
        header["n"] = len(payload)
        if line is None:
            line = _encode(header)
        with self._lock:
            if self._pid != forks.PID:
                self._after_fork()
            if self._fd is None or self._offset > SEGMENT_MAX:
                if self._fd is not None:
                    os.close(self._fd)
                self._open()
            assert self._fd is not None
            data = line + payload if payload else line
            try:  # one write: the common case, inline (the training thread pays for each call)
                if os.write(self._fd, data) != len(data):
                    self._write_rest(data)
            except OSError:
                self._cut()
                if not self._next_root():  # this disk is full: go on on the next one
                    raise
                self._open()
                self._write(data)
            except BaseException:  # a KeyboardInterrupt right after a short write
                self._cut()
                raise
            if self.fsync:
                os.fsync(self._fd)
            segment = self._segments[-1]
            record = Record(header, segment.path, self._offset + len(line), len(payload))
            self._offset += len(data)
            if header["t"] in WORK:
                segment.outstanding.add(header["rid"])
            return record

    def _write(self, data: bytes) -> None:
        try:
            if os.write(self._fd, data) != len(data):
                self._write_rest(data)
        except BaseException:
            self._cut()
            raise

    def _write_rest(self, data: bytes) -> None:
        """Finish a short write (a signal, a nearly full disk) from where it stopped."""
        written = os.fstat(self._fd).st_size - self._offset
        while written < len(data):
            written += os.write(self._fd, data[written:])

    def _cut(self) -> None:
        """Cut the segment back to where the record being written started: a torn record in
        the middle would make the later ones unreadable."""
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError:
            pass

    def mark_done(self, rid: str) -> None:
        """The record ``rid`` is resolved (stored, failed with its reason, or ingested)."""
        self.append({"t": "done", "rid": rid})
        removable = []
        with self._lock:
            for segment in self._segments:
                segment.outstanding.discard(rid)
            # oldest first, never the one being written: done marks live in later segments
            while len(self._segments) > 1 and not self._segments[0].outstanding:
                removable.append(self._segments.pop(0).path)
        for path in removable:
            try:
                os.unlink(path)
            except OSError:
                pass

    def outstanding(self) -> int:
        with self._lock:
            return sum(len(s.outstanding) for s in self._segments)

    def close(self, *, remove_if_done: bool = True) -> bool:
        """Close the files; remove the journal when nothing in it is outstanding."""
        with self._lock:
            done = not any(s.outstanding for s in self._segments)
            segments, dirs = self._segments, self._dirs
            self._release()
            self._generation += 1
            self.dir = os.path.join(self.root, f"{self.owner}.{self._generation}")
        if done and remove_if_done and segments:
            for path in dirs:
                remove_journal_dir(path)
        return done

    def _release(self) -> None:
        """Close every file and lock; the next append starts afresh on the first root."""
        for fd in (self._fd, self._lock_fd, *self._other_locks):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._lock_fd = None
        self._other_locks, self._dirs, self._segments = [], [], []
        self._root_index = 0
        self.root = self.roots[0]

    def _after_fork(self) -> None:
        """A forked child writes its own journal: the parent's lock stays the parent's."""
        self._release()
        self._offset = 0
        self._pid = os.getpid()
        self._generation = 0
        from clearml_hooks.store.owner import current_owner

        self.owner = current_owner()
        self.dir = os.path.join(self.root, self.owner)


# -- reading (recovery, sync, status) ---------------------------------------------------------------

def read_records(journal_dir: str) -> tuple[list[Record], set[str]]:
    """Every record of a journal, in order, and the rids marked done. Stops at a torn tail."""
    records: list[Record] = []
    done: set[str] = set()
    try:
        names = sorted(n for n in os.listdir(journal_dir) if n.endswith(".log"))
    except OSError:
        return records, done
    for name in names:
        path = os.path.join(journal_dir, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                break
            try:
                header = json.loads(data[pos:end])
                length = int(header.get("n", 0))
                if length < 0 or not isinstance(header.get("t"), str):
                    raise ValueError("not a record")
            except (ValueError, TypeError, AttributeError):
                break  # damaged from here on: what came before is still read
            if end + 1 + length > len(data):
                break  # torn payload
            if header.get("t") == "done":
                done.add(header.get("rid"))
            else:
                records.append(Record(header, path, end + 1, length))
            pos = end + 1 + length
    return records, done


class JournalInfo:
    """A journal as ``clearml-hooks status`` shows it."""

    def __init__(self, path: str, owner: str, alive: bool, pending: list[Record],
                 size: int) -> None:
        self.path, self.owner, self.alive, self.pending, self.size = (
            path, owner, alive, pending, size)


def journal_dirs(root: str) -> Iterator[str]:
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        if not name.startswith(".") and os.path.isdir(path):
            yield path


def all_journal_dirs(roots: str | list[str]) -> Iterator[str]:
    for root in [roots] if isinstance(roots, str) else roots:
        yield from journal_dirs(root)


def try_lock(journal_dir: str) -> int | None:
    """Lock a journal (its owner is gone); the fd to keep while finishing it, or None."""
    try:  # no O_CREAT: a journal folder always has its lock file (see _create_locked_dir)
        fd = os.open(os.path.join(journal_dir, "lock"), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def is_alive(journal_dir: str) -> bool:
    fd = try_lock(journal_dir)
    if fd is None:
        return True
    os.close(fd)
    return False


def describe(roots: str | list[str]) -> list[JournalInfo]:
    """Every journal under the roots with its unresolved records (``clearml-hooks status``)."""
    out = []
    for path in all_journal_dirs(roots):
        records, done = read_records(path)
        pending = [r for r in records if r.header.get("t") in WORK and r.rid not in done]
        size = 0
        for name in os.listdir(path):
            try:
                size += os.path.getsize(os.path.join(path, name))
            except OSError:
                pass
        out.append(JournalInfo(path, os.path.basename(path), is_alive(path), pending, size))
    return out


def remove_journal_dir(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
