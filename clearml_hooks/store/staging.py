"""Staging: hold on to the exact bytes of a saved file until the worker has stored them.

Why each way exists (cheapest exact way first, decided per file in the training thread):

- ``inline``: a small file (``inline_max``, 64 KiB by default) is read and its bytes go into the
  journal record itself: a private copy for the price of one append, no file created.
- ``reflink``: a private, O(1) copy-on-write clone (btrfs, XFS, bcachefs, ZFS, ...): later
  writes to the user's file never reach it.
- ``link``: elsewhere (ext4) a hard link costs microseconds but shares the inode with the
  user's file. Its identity (inode, size, mtime_ns) is journaled and checked by the worker
  before and after it reads; before a *hooked* save rewrites that path we make our own private
  copy first (``make_private``); any other in-place write makes the snapshot fail loudly,
  never store other bytes. A path whose pending link was clobbered that way is copied from
  then on (``copy``).
- ``copy``: a private copy (no link possible, or the path was clobbered before).

The user's files are never unlinked, renamed or truncated here: only our own staging paths.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections.abc import Callable
from typing import Any

FICLONE = 0x40049409  # linux/fs.h
INLINE_MAX = 64 << 10
PRIVATE_SUFFIX = ".private"


class NotStaged(Exception):
    """This file cannot be staged (not a regular file, disk too full): the reason says why."""


class SourceChanged(Exception):
    """The staged bytes changed before they were stored (an in-place write behind the hooks)."""


def identity(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


_no_reflink: set[int] = set()  # devices where FICLONE said "not supported": do not try again


def _reflink(src_fd: int, dst: str, device: int) -> bool:
    if device in _no_reflink:
        return False
    try:
        import fcntl
    except ImportError:
        _no_reflink.add(device)
        return False
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.ioctl(fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
            _no_reflink.add(device)
        os.unlink(dst)
        return False
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    """Remove one of our own staging files, if it is there."""
    try:
        os.unlink(path)
    except OSError:
        pass


def copy_private(src_fd: int, dst: str) -> None:
    """Copy an open file into a new private file (in-kernel where possible)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(src_fd).st_size
        offset = 0
        try:
            while offset < size:
                n = os.copy_file_range(src_fd, fd, size - offset, offset, offset)
                if n == 0:
                    break
                offset += n
        except (AttributeError, OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            offset = 0
            while True:
                chunk = os.pread(src_fd, 1 << 20, offset)
                if not chunk:
                    break
                os.write(fd, chunk)
                offset += len(chunk)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dst)
        raise
    os.close(fd)


def free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


FREE_SPACE_TTL = 1.0  # seconds a folder's free space is trusted, while it shows room
_free_seen: dict[str, tuple[float, int]] = {}  # folder -> (monotonic time, free bytes then)


def _room(folder: str, need: int, *, fresh: bool) -> int | None:
    """Free bytes on ``folder``'s filesystem, when fewer than ``need``; None when there is room.

    ``fresh=False`` (a link or reflink is tried first, and takes no data blocks) may answer
    from a statvfs of the same folder up to FREE_SPACE_TTL old that showed room: in a cold
    training thread statvfs costs tens of microseconds per save. A refusal, and every copy, is
    decided on a fresh figure."""
    if not fresh:
        seen = _free_seen.get(folder)
        if seen is not None and seen[1] >= need and time.monotonic() - seen[0] < FREE_SPACE_TTL:
            return None
    free = free_bytes(folder)
    if free is None:
        return None
    if len(_free_seen) >= 64:  # hidden folders beside users' files are new per snapshot
        _free_seen.clear()
    _free_seen[folder] = (time.monotonic(), free)
    return free if free < need else None


def open_regular(src: str) -> tuple[int, os.stat_result]:
    """Open a saved file for staging: (fd, its stat). NotStaged when it is not a regular file
    (a FIFO or device: opened non-blocking, so it never blocks us) or cannot be opened (gone
    already, a symlink loop, no permission): the snapshot then fails with that reason."""
    try:
        fd = os.open(src, _OPEN_FLAGS)
    except OSError as exc:
        raise NotStaged(f"{src} cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotStaged(f"{src} is not a regular file")
    return fd, st


def read_inline(src: str, fd: int, st: os.stat_result) -> bytes:
    """The whole file (``st.st_size`` bytes): NotStaged when it grew or shrank meanwhile."""
    data = os.pread(fd, st.st_size + 1, 0)
    if len(data) != st.st_size:
        raise NotStaged(f"{src} changed while it was read")
    return data


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def stage_file(src: str, place: Callable[[os.stat_result], str], *, inline_max: int,
               force_copy: bool, min_free: int,
               opened: tuple[int, os.stat_result] | None = None) -> tuple[dict[str, Any], bytes]:
    """Stage one saved file. Returns (its journal entry, inline payload or b"").

    ``place(stat)`` says where a link/reflink/copy goes; it is only asked for files too big to
    go inline (small saves never touch the staging folder). ``opened``: the file already
    opened by ``open_regular`` (closed here).
    """
    fd, st = opened if opened is not None else open_regular(src)
    try:
        if st.st_size <= inline_max:
            return {"size": st.st_size, "how": "inline", "mtime_ns": st.st_mtime_ns}, \
                read_inline(src, fd, st)
        staged = place(st)
        folder = os.path.dirname(staged) or "."
        _check_room(folder, st, min_free, fresh=force_copy)
        entry: dict[str, Any] = {"size": st.st_size, "path": staged, "mtime_ns": st.st_mtime_ns}
        if _reflink(fd, staged, st.st_dev):
            entry["how"] = "reflink"
        elif not force_copy and _try_link(src, staged, st):
            entry["how"] = "link"
            entry["id"] = identity(st)
        else:
            if not force_copy:
                _check_room(folder, st, min_free, fresh=True)
            copy_private(fd, staged)
            entry["how"] = "copy"
        return entry, b""
    finally:
        os.close(fd)


def link_first(src: str, staged: str, folder: str, *, inline_max: int,
               min_free: int) -> dict[str, Any] | None:
    """Stage a file that was hard-linked the last time it was saved (a checkpoint saved again
    and again): link first, then ``stat`` our own link, so the identity journaled is that of
    the very inode we hold. Three system calls fewer than the general way (no open, fstat,
    close). ``staged`` is a new name in ``folder``. None, with nothing left behind, when the
    file must take the general way (small now, not a regular file, on another filesystem, or
    maybe no room)."""
    try:
        os.link(src, staged)
    except OSError:
        return None
    try:
        st = os.lstat(staged)  # link() of a symlink links the symlink itself: refused here
        if (stat.S_ISREG(st.st_mode) and st.st_size > inline_max
                and _room(folder, st.st_size + min_free, fresh=False) is None):
            return {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                    "id": [st.st_ino, st.st_size, st.st_mtime_ns]}  # identity(st)
    except OSError:
        pass
    _unlink_quietly(staged)
    return None


def _check_room(folder: str, st: os.stat_result, min_free: int, *, fresh: bool) -> None:
    free = _room(folder, st.st_size + min_free, fresh=fresh)
    if free is not None:
        raise NotStaged(f"only {free >> 20} MiB free on the filesystem of {folder}, "
                        f"{st.st_size >> 20} MiB needed plus a reserve of {min_free >> 20} MiB "
                        f"(setting staging_min_free)")


def _try_link(src: str, staged: str, st: os.stat_result) -> bool:
    try:
        os.link(src, staged)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES,
                         errno.ENOSPC, errno.EDQUOT):  # a copy is tried, after a fresh check
            return False
        raise
    try:
        linked = os.stat(staged)
    except OSError:
        linked = None
    if linked is None or identity(linked) != identity(st):
        os.unlink(staged)  # the path was replaced or written between open and link
        return False
    return True


PRIVATE = "private"  # make_private: the snapshot's bytes are now in a private copy
GONE = "gone"  # our staged link is gone: the worker stored (or failed) the snapshot already
CHANGED = "changed"  # the bytes had changed already: the snapshot fails, with its reason
NO_ROOM = "no room"  # no room for a private copy: the rewrite will fail the snapshot
NOT_COPIED = "not copied"  # the copy failed otherwise (staging folder unwritable, ...)


def make_private(entry: dict[str, Any], min_free: int = 0) -> str:
    """Before a hooked save rewrites a linked file: copy our staged link to a private file.

    Returns PRIVATE or GONE when nothing is lost by the rewrite; CHANGED, NO_ROOM or NOT_COPIED
    when the snapshot will fail (the worker says why). GONE is not a rewrite: the worker removes
    a stored snapshot's link before it tells the capturer, so a save can come in between. Never
    raises OSError: whatever happens to our staging folder meanwhile, the user's save goes on.
    """
    staged = entry["path"]
    private = staged + PRIVATE_SUFFIX
    if os.path.exists(private):
        return PRIVATE
    try:
        fd = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return GONE
    except OSError:
        return NOT_COPIED
    tmp = f"{private}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        before = os.fstat(fd)
        if identity(before) != entry["id"]:
            return CHANGED
        free = free_bytes(os.path.dirname(staged))
        if free is not None and free < before.st_size + min_free:
            return NO_ROOM
        copy_private(fd, tmp)  # removes its partial copy when it fails
        if identity(os.fstat(fd)) != entry["id"]:
            _unlink_quietly(tmp)
            return CHANGED
        os.replace(tmp, private)
        return PRIVATE
    except OSError as exc:  # the disk filled, or our staging folder went away meanwhile
        _unlink_quietly(tmp)
        if not os.path.exists(staged):
            return GONE
        return NO_ROOM if exc.errno in (errno.ENOSPC, errno.EDQUOT) else NOT_COPIED
    finally:
        os.close(fd)


# a staged path we cannot open for one of these reasons will not open later either: the
# snapshot fails with the reason (not a service outage to wait out)
_GONE_FOR_GOOD = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EACCES,
                  errno.EPERM)


class StagedReader:
    """Opens a staged file for the worker and tells whether its bytes are still the saved ones."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry

    def open(self):
        """The file to read: the private copy if one was made, else the staged path."""
        try:
            return self._open()
        except OSError as exc:
            if exc.errno not in _GONE_FOR_GOOD:
                raise  # EIO, ESTALE, ...: maybe a passing fault of the disk; tried again
            path = self.entry["path"]
            if exc.errno == errno.ENOENT:
                raise SourceChanged(f"the staged file {path} is missing (our staging folder "
                                    "was removed before the snapshot was stored)") from None
            raise SourceChanged(f"the staged file {path} cannot be read: "
                                f"{exc.strerror or exc}") from None

    def _open(self):
        path = self.entry["path"]
        private = path + PRIVATE_SUFFIX
        if self.entry.get("how") == "link" and os.path.exists(private):
            return open(private, "rb", buffering=0)
        f = open(path, "rb", buffering=0)
        if self.entry.get("how") == "link" and identity(os.fstat(f.fileno())) != self.entry["id"]:
            f.close()
            if os.path.exists(private):
                return open(private, "rb", buffering=0)
            raise SourceChanged(self.changed_reason())
        return f

    def read(self, consume: Callable[[Any], Any]) -> Any:
        """``consume(file)`` over the snapshot's bytes; SourceChanged if they changed.

        A hooked save that rewrites the path copies our link to a private file *before* it
        writes. When that rewrite lands while we read the link (``consume`` returns mixed bytes,
        or raises on them), the read is redone from the private copy instead of failing a
        snapshot whose bytes are safe.
        """
        with self.open() as src:
            try:
                result = consume(src)
            except Exception:
                if not self._rewritten(src):
                    raise
            else:
                if not self._rewritten(src):
                    return result
        private = self.entry["path"] + PRIVATE_SUFFIX
        try:
            src = open(private, "rb", buffering=0)
        except OSError:
            raise SourceChanged(self.changed_reason()) from None
        with src:
            return consume(src)

    def _rewritten(self, f) -> bool:
        return (self.entry.get("how") == "link" and not f.name.endswith(PRIVATE_SUFFIX)
                and identity(os.fstat(f.fileno())) != self.entry["id"])

    def changed_reason(self) -> str:
        return ("the file was rewritten in place (an open file handle, another program or a "
                "resumed run) before its bytes were stored; the snapshot is not stored rather "
                "than stored with other bytes")


def walk_files(root: str) -> list[tuple[str, str]]:
    """(absolute path, path relative to ``root``) of every file under a folder, sorted."""
    out = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            out.append((full, os.path.relpath(full, root)))
    return sorted(out, key=lambda item: item[1])


def remove_staging(paths: list[str]) -> None:
    """Remove staging folders or staged files (ours only: their names are ours)."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            continue
        for name in (path, path + PRIVATE_SUFFIX):
            _unlink_quietly(name)
