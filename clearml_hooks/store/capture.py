"""The hooks' sink: a hooked save becomes a staged, journaled snapshot before the call returns.

In the training thread a save costs one ``stat``, one stage per file (inline bytes, a reflink or
a hard link: see ``staging``) and one journal append. It never touches the catalog or the
network, and never the user's files: everything else happens in the background worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from stat import S_ISREG
from typing import TYPE_CHECKING, Any

from clearml_hooks.hooks.binding import Location
from clearml_hooks.store import forks, staging
from clearml_hooks.store.journal import Record, new_id
from clearml_hooks.store.pending_links import PENDING, on_resolved
from clearml_hooks.store.snapshot_lines import SnapshotLines

if TYPE_CHECKING:
    from clearml_hooks.hooks.registry import Hook
    from clearml_hooks.store import Store

log = logging.getLogger("clearml_hooks")

DEFAULT_MIN_FREE = 1 << 30  # stop staging when a filesystem would keep less than this free


def _plain_iteration(value: Any) -> int | None:
    """An iteration as a plain int (a NumPy integer, ...), or None when it is not one."""
    if value is None or type(value) is int:
        return value
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def location_files(location: Location) -> list[tuple[str, str]]:
    """(absolute path, relative name) of every file a location covers."""
    if location.kind == "file":
        path = os.path.abspath(location.path)
        return [(path, os.path.basename(path))]
    if location.kind == "files":
        return [(os.path.abspath(p), os.path.basename(p)) for p in location.files]
    return staging.walk_files(os.path.abspath(location.path))


class Capturer:
    """Turns hooked calls of one task into journal records and hands them to the worker."""

    def __init__(self, store: Store, task_id: str, *, offline: bool = False,
                 task_header: dict[str, Any] | None = None) -> None:
        self.store = store
        self.task_id = task_id
        self.offline = offline
        self.stats: Counter[str] = Counter()
        self.iteration: int | None = None
        self.inline_max = store.settings.inline_max
        self.min_free = store.settings.staging_min_free
        self._task_header = task_header
        self._task_rid: str | None = None
        self._journal_pid: int | None = None
        # paths copied, never linked: written in place behind a pending link before, or saved
        # through a file object (whose next open(p, "wb") truncates before any hook runs)
        self._clobbered: set[str] = set()
        # paths whose last snapshot was one hard link in the staging folder -> (that folder
        # with a trailing separator, the journal folder then): linked first next time
        # (staging.link_first), without opening them
        self._link_again: dict[str, tuple[str, str]] = {}
        self._absolute: dict[str, tuple[str, str]] = {}  # absolute path -> (abspath, basename)
        self._seen_loads: set[tuple] = set()
        self._warned: set[str] = set()
        self._start_timer: threading.Timer | None = None
        self._listening = False
        self._made_home: str | None = None
        self._lines = SnapshotLines(task_id)

    # -- the task record ------------------------------------------------------------------------

    def start(self, delay: float = 2.0) -> None:
        """Journal the task, and have the worker ingest it soon (not at once: a script that
        saves nothing and exits quickly never pays for opening the catalog)."""
        self._journal_task()
        if self.offline:
            return
        timer = threading.Timer(delay, self._start_worker)
        timer.daemon = True
        timer.name = "clearml-hooks-start"
        self._start_timer = timer
        timer.start()

    def _start_worker(self) -> None:
        try:
            self.store.worker.start()  # also queues the recovery of dead processes' journals
        except Exception:
            pass

    def _journal_task(self) -> None:
        if self._task_header is None or self._journal_pid == forks.PID:
            return
        try:
            record = self.store.journal.append(dict(self._task_header, rid=new_id()))
        except OSError as exc:  # tried again with the next record
            self._warn_once("journal", "clearml-hooks: cannot write the capture journal (%s); "
                            "saves are not captured until there is room. Your saves are not "
                            "affected.", exc)
            return
        self._journal_pid = forks.PID
        self._task_rid = record.rid
        if not self.offline:
            self.store.worker.submit(record, start=False)

    def wait_task_ingested(self, timeout: float | None) -> bool:
        """Wait until the task row is in the catalog (for API calls that read it)."""
        self._journal_task()
        if self.offline and self._task_header is not None:
            from clearml_hooks.store import ingest  # offline: the API still needs the row

            ingest.ingest_task(self.store.catalog, self._task_header)
            return True
        if self._task_rid is None:
            return True
        worker = self.store.worker
        worker.start()
        return worker.event_for(self._task_rid).wait(timeout)

    def journal_status(self, status: str) -> Record | None:
        if self._task_header is None:
            return None
        self._journal_task()
        try:
            record = self.store.journal.append({"t": "status", "rid": new_id(),
                                                "task": self.task_id, "status": status})
        except OSError:
            return None
        if not self.offline:
            self.store.worker.submit(record, start=False)
        return record

    # -- CaptureSink ----------------------------------------------------------------------------

    def skipped(self, reason: str) -> None:
        self.stats[f"skipped_{reason}"] += 1

    @property
    def protecting(self) -> bool:
        return bool(PENDING.paths)

    def before_save(self, path: str) -> None:
        """A hooked save is about to write ``path``: make private copies of the pending
        hard-linked snapshots it would overwrite in place (the file, a directory's files, a
        checkpoint prefix's files), this task's or an earlier one's in this process. The user's
        file is not touched."""
        if not PENDING.paths:
            return
        try:
            st: os.stat_result | None = os.stat(path)
        except (OSError, ValueError):
            st = None  # not there yet: only a checkpoint prefix's files can be pending
        if st is not None and S_ISREG(st.st_mode):  # the save rewrites this inode, no other
            if st.st_ino not in PENDING.inodes:
                return
            hits = PENDING.take_inode(st.st_ino)
        else:  # a folder, or a checkpoint prefix
            hits = PENDING.take_under(os.path.abspath(path))
        for user_path, entries in hits:
            for entry in entries:
                outcome = staging.make_private(entry, self.min_free)
                if outcome == staging.PRIVATE:
                    self.stats["private_copies"] += 1
                elif outcome != staging.GONE:
                    self._clobbered_path(user_path, outcome)

    def keep_pending_private(self) -> int:
        """At close, with snapshots still pending (offline, or the store unreachable): copy the
        pending links of paths this process saved more than once (any task) to private files.
        The next run rewrites such a checkpoint in place before anything stores this run's last
        version of it; without the copy that version fails. Paths saved once (``epoch_7.pt``) keep
        their links: copying them all could double a disk. Returns how many were copied."""
        copied = 0
        for user_path, entries in PENDING.take_saved_again():
            for entry in entries:
                outcome = staging.make_private(entry, self.min_free)
                if outcome == staging.PRIVATE:
                    copied += 1
                elif outcome in (staging.NO_ROOM, staging.NOT_COPIED):
                    self._warn_once("no-room-close", "clearml-hooks: could not keep a private "
                                    "copy of the pending snapshot of %s (%s); if it is rewritten "
                                    "in place before it is stored, that snapshot fails",
                                    user_path, outcome)
        self.stats["private_copies_at_close"] += copied
        return copied

    def _clobbered_path(self, user_path: str, outcome: str) -> None:
        self._clobbered.add(user_path)
        self.stats["snapshots_overwritten"] += 1
        if outcome in (staging.NO_ROOM, staging.NOT_COPIED):
            why = "no room for" if outcome == staging.NO_ROOM else "could not make"
            self._warn_once("no-room-private", "clearml-hooks: %s a private copy of the pending "
                            "snapshot of %s before it is saved again; that snapshot fails "
                            "instead of storing other bytes, and later saves of this path are "
                            "copied", why, user_path)
            return
        self._warn_once("clobbered", "clearml-hooks: %s was rewritten in place before its "
                        "previous snapshot was stored (an open file handle or another writer); "
                        "that snapshot fails instead of storing other bytes, and later saves of "
                        "this path are copied", user_path)

    def saved(self, hook: Hook | None, location: Location, framework: str, *,
              through_handle: bool = False) -> None:
        iteration = location.iteration if location.iteration is not None else self.iteration
        if location.kind == "file":  # the common case: one file, one abspath
            names = self._absolute.get(location.path)
            if names is None:
                names = self._names(location.path)
            source, name = names
            if through_handle:
                self._clobbered.add(source)  # copied, never linked
            elif (again := self._link_again.get(source)) is not None:
                if source not in self._clobbered and self._journal_link_first(
                        source, name, framework, iteration, again):
                    return
            try:
                opened: tuple[int, os.stat_result] | None = staging.open_regular(source)
            except (OSError, staging.NotStaged):
                opened = None  # staged again below, which says why it cannot be
            if opened is not None and opened[1].st_size <= self.inline_max:
                if self._journal_inline(source, name, framework, iteration, *opened):
                    return
                opened = None
            self.journal_snapshot([(source, name)], source=source, kind="file", name=name,
                                  framework=framework, iteration=iteration, opened=opened)
            return
        files = location_files(location)
        source = os.path.abspath(location.path)
        if not files:
            self.stats["skipped_nothing_written"] += 1
            return
        name = os.path.basename(source.rstrip(os.sep)) or source
        if through_handle:
            self._clobbered.update(full for full, _rel in files)  # copied, never linked
        self.journal_snapshot(files, source=source, kind=location.kind, name=name,
                              framework=framework, iteration=iteration)

    def _names(self, path: str) -> tuple[str, str]:
        """(absolute path, file name); kept for absolute paths, which do not depend on the
        working directory (a checkpoint path is saved again and again)."""
        source = os.path.abspath(path)
        names = (source, os.path.basename(source))
        if os.path.isabs(path):
            if len(self._absolute) >= 4096:
                self._absolute.clear()
            self._absolute[path] = names
        return names

    def _journal_inline(self, source: str, name: str, framework: str, iteration: int | None,
                        fd: int, st: os.stat_result) -> bool:
        """The hot path: one small file, read into its journal record (what ``journal_snapshot``
        does for it, in fewer steps). False when the general path must take it."""
        try:
            data = staging.read_inline(source, fd, st)
        except (OSError, staging.NotStaged):
            return False
        finally:
            os.close(fd)
        if self._journal_pid != forks.PID:
            self._journal_task()
        fields = (new_id(), source, name, framework, _plain_iteration(iteration), time.time(),
                  st.st_size, st.st_mtime_ns)
        header, line = self._lines.record(*fields)
        record = self._append(header, data, [], strict=False, line=line)
        if record is not None:
            stats = self.stats
            stats["staged_inline"] += 1
            stats["saves"] += 1
            if not self.offline:
                self.store.worker.submit(record)
        return True

    def _journal_link_first(self, source: str, name: str, framework: str,
                            iteration: int | None, again: tuple[str, str]) -> bool:
        """The hot path for a file hard-linked last time (a checkpoint saved again and again):
        link it first again (``staging.link_first``: link and stat, no open) and journal the
        one-file line. What ``journal_snapshot`` does for it, in fewer steps: each step costs
        tens of microseconds in a training thread whose caches the save just emptied. False
        when the general path must take it."""
        folder, journal_dir = again
        if journal_dir is not self.store.journal.dir or self._journal_pid != forks.PID:
            self._link_again.pop(source, None)  # a new journal (after a close or a fork)
            return False
        rid = new_id()
        staged = folder + rid
        entry = staging.link_first(source, staged, folder, inline_max=self.inline_max,
                                   min_free=self.min_free)
        if entry is None:
            self._link_again.pop(source, None)
            return False
        if iteration is not None and type(iteration) is not int:
            iteration = _plain_iteration(iteration)
        header, line = self._lines.record(rid, source, name, framework, iteration, time.time(),
                                          entry["size"], entry["mtime_ns"], "link", staged,
                                          entry["id"], [staged])
        record = self._append(header, b"", [staged], strict=False, line=line)
        if record is None:
            return True
        linked = header["files"][0]
        linked["rid"] = rid
        PENDING.add(source, linked)
        stats = self.stats
        stats["staged_link"] += 1
        stats["saves"] += 1
        if not self.offline:
            self.store.worker.submit(record)  # its listener was added with the first link
        return True

    def _append(self, header: dict[str, Any], payload: bytes, folders: list[str], *,
                strict: bool, line: bytes | None = None) -> Record | None:
        """Journal one snapshot record; None (said once) when no disk takes the journal."""
        try:
            return self.store.journal.append(header, payload, line=line)
        except OSError as exc:  # no disk takes even the journal: say so, never fail the save
            staging.remove_staging(folders)
            if strict:
                raise ValueError(f"cannot journal the weights: {exc}") from exc
            self.stats["not_journaled"] += 1
            self._warn_once("journal", "clearml-hooks: cannot write the capture journal (%s); "
                            "saves are not captured until there is room. Your saves are not "
                            "affected.", exc)
            return None
        except BaseException:
            staging.remove_staging(folders)
            raise

    def journal_snapshot(self, files: list[tuple[str, str]], *, source: str, kind: str,
                         name: str, framework: str | None, iteration: int | None,
                         model_id: str | None = None, dest: str | None = None,
                         is_package: bool | None = None, strict: bool = False,
                         opened: tuple[int, os.stat_result] | None = None) -> Record | None:
        """Stage ``files`` and journal one snapshot of them. The snapshot is durable and its
        bytes fixed when this returns. ``strict`` (update_weights): refuse what cannot be
        staged instead of journaling a failed snapshot. ``opened``: the single file, already
        opened by ``staging.open_regular``."""
        self._journal_task()
        rid = new_id()
        entries: list[dict[str, Any]] = []
        payloads: list[bytes] = []
        folders: list[str] = []
        error = None
        try:
            single = len(files) == 1
            for full, rel in files:
                entry, payload = self._stage(full, self._placer(full, rid, rel, folders, single),
                                             opened)
                opened = None
                entry["rel"] = rel
                entries.append(entry)
                if payload:
                    payloads.append(payload)
                self.stats[f"staged_{entry['how']}"] += 1
        except staging.NotStaged as exc:
            if strict:
                staging.remove_staging(folders)
                raise ValueError(str(exc)) from None
            error = f"not staged: {exc}"
            staging.remove_staging(folders)
            entries = [{"rel": rel, "size": 0, "how": "none"} for _full, rel in files]
            payloads = []
            self.stats["not_staged"] += 1
            self._warn_once("not-staged", "clearml-hooks: a snapshot of %s was not captured: %s. "
                            "Your save is not affected.", source, exc)
        except BaseException:
            staging.remove_staging(folders)
            raise
        line = None
        if (kind == "file" and len(entries) == 1 and "mtime_ns" in entries[0] and not error
                and not model_id and not dest and is_package is None):
            # the common one-file save: its line without json.dumps (see snapshot_lines)
            entry = entries[0]
            fields = (rid, source, name, framework, _plain_iteration(iteration), time.time(),
                      entry["size"], entry["mtime_ns"], entry["how"], entry.get("path"),
                      entry.get("id"), folders)
            header, line = self._lines.record(*fields)
        else:
            header = {"t": "snap", "rid": rid, "task": self.task_id, "src": source,
                      "name": name, "fw": framework, "kind": kind, "it": iteration,
                      "ts": time.time(), "files": entries, "staging": folders}
            if kind == "file" and entries and "mtime_ns" in entries[0]:
                header["src_size"], header["src_mtime_ns"] = entries[0]["size"], entries[0].pop(
                    "mtime_ns")
            if model_id:
                header["model"] = model_id
            if dest:
                header["dest"] = dest
            if is_package is not None:
                header["package"] = is_package
            if error:
                header["error"] = error
        payload = payloads[0] if len(payloads) == 1 else b"".join(payloads)
        record = self._append(header, payload, folders, strict=strict, line=line)
        if record is None:
            return None
        linked = [e for e in entries if e["how"] == "link"]
        if kind == "file" and single:  # linked into the staging folder: link first next time
            home = self._made_home
            if linked and home and folders == [os.path.join(home, rid)]:
                if len(self._link_again) >= 1024:
                    self._link_again.clear()
                self._link_again[source] = (home + os.sep, self.store.journal.dir)
            else:
                self._link_again.pop(source, None)
        for (full, _rel), entry in zip(files, entries, strict=True):
            if entry["how"] == "link":
                entry["rid"] = rid
                PENDING.add(full, entry)
        self.stats["saves"] += 1
        if not self.offline:
            worker = self.store.worker
            if linked and not self._listening:
                self._listening = True
                worker.add_listener(on_resolved)
            worker.submit(record)
        return record

    def _stage(self, full: str, place, opened: tuple[int, os.stat_result] | None
               ) -> tuple[dict[str, Any], bytes]:
        """``staging.stage_file``, once more when our staging folder was removed behind us (a
        tmp reaper, a cleanup script); any other OS error is a reason the snapshot fails, never
        an error in the user's save."""
        try:
            try:
                return self._stage_file(full, place, opened)
            except FileNotFoundError:
                home = self._made_home
                if home is None or os.path.isdir(home):
                    raise
                self._made_home = None  # made again by the next place()
                return self._stage_file(full, place, None)  # stage_file closed ``opened``
        except OSError as exc:
            raise staging.NotStaged(f"{full} could not be staged: {exc}") from None

    def _stage_file(self, full: str, place, opened: tuple[int, os.stat_result] | None
                    ) -> tuple[dict[str, Any], bytes]:
        return staging.stage_file(full, place, inline_max=self.inline_max, min_free=self.min_free,
                                  force_copy=full in self._clobbered, opened=opened)

    def _placer(self, full: str, rid: str, rel: str, folders: list[str], single: bool):
        """Where a file too big to go inline is staged: in this process's staging folder when
        it is on the same filesystem (a link is possible; a one-file snapshot is one flat
        entry there, no folder made per save), else in a hidden folder beside it, else (nothing
        writable there) the staging folder, where it is copied. ``folders`` collects what to
        remove once the snapshot is resolved."""

        def place(st: os.stat_result) -> str:
            home = self._staging_home()
            if st.st_dev == self.store.staging_device() or not os.access(
                    os.path.dirname(full), os.W_OK):
                if single:
                    path = os.path.join(home, rid)
                    if path not in folders:  # asked again when the folder was made again
                        folders.append(path)
                    return path
                folder = os.path.join(home, rid)
            else:
                folder = os.path.join(os.path.dirname(full), f".clearml-hooks-staging-{rid}")
            if folder not in folders:
                folders.append(folder)
            path = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return path

        return place

    def _staging_home(self) -> str:
        home = self.store.staging_dir
        if home != self._made_home:
            os.makedirs(home, exist_ok=True)
            self._made_home = home
        return home

    def loaded(self, hook: Hook | None, location: Location, framework: str) -> None:
        path = os.path.abspath(location.path)
        try:  # a checkpoint prefix is not a file itself: stat its first file
            st = os.stat(location.files[0] if location.kind == "files" and location.files else path)
        except OSError:
            self.stats["skipped_missing"] += 1
            return
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in self._seen_loads:
            return
        self._seen_loads.add(key)
        self.stats["loads"] += 1
        self._journal_task()
        header = {"t": "load", "rid": new_id(), "task": self.task_id, "path": path,
                  "kind": location.kind, "files": [os.path.abspath(p) for p in location.files],
                  "fw": framework, "name": os.path.basename(path.rstrip(os.sep)),
                  "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ts": time.time()}
        try:
            record = self.store.journal.append(header)
        except OSError:
            self.stats["not_journaled"] += 1
            return
        if not self.offline:
            self.store.worker.submit(record)

    # -- lifecycle ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        return self.store.worker.wait(timeout)

    def pending(self) -> int:
        return self.store.journal.outstanding()

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(msg, *args)
