"""The background side of capture: journal records -> catalog rows and stored blobs.

``Processor`` applies one record (idempotent; a transient failure raises). ``Worker`` runs it in
a background thread in journal order: a catalog or object store that is down, slow or full
makes it wait and retry (the records stay in the journal), a job that hangs is abandoned after
its timeout so one bad job never blocks the others, and nothing here ever runs in the training
thread. ``recover`` finishes the journals of processes that died.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clearml_hooks.hooks import contract
from clearml_hooks.store.journal import WORK, Record

if TYPE_CHECKING:
    from clearml_hooks.store import Store
    from clearml_hooks.store.journal import Journal

log = logging.getLogger("clearml_hooks")

CHUNK = 1 << 20
MAX_BACKOFF = 30.0
QUIET = 0.05  # a burst of saves is gathered until it pauses this long ...
MAX_GATHER = 1.0  # ... or for at most this long
MAX_BATCH = 256
PERMANENT_ATTEMPTS = 3
_TRANSIENT_MODULES = ("sqlalchemy", "psycopg", "botocore", "aiobotocore", "aiohttp", "s3fs",
                      "fsspec", "urllib3", "requests", "google", "azure", "adlfs", "gcsfs")


def is_transient(exc: BaseException) -> bool:
    """A failure of the service, not of the snapshot: wait and retry, keep it journaled."""
    from clearml_hooks.store import StoreUnavailable

    if isinstance(exc, (OSError, TimeoutError, StoreUnavailable, ConnectionError)):
        return True
    top = type(exc).__module__.split(".")[0]
    if top == "sqlalchemy":
        from sqlalchemy import exc as sa

        return isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError,
                                sa.TimeoutError)) or bool(getattr(exc, "connection_invalidated",
                                                                  False))
    return top in _TRANSIENT_MODULES


def hash_stream(f) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)
        if not n:
            break
        h.update(view[:n])
        size += n
    return h.hexdigest(), size


def manifest_digest(files: list[tuple[str, str, int]]) -> str:
    h = hashlib.sha256()
    for rel, sha, size in sorted(files):
        h.update(f"{rel}\0{sha}\0{size}\n".encode())
    return h.hexdigest()


class Processor:
    """Applies journal records to the catalog and the blob store."""

    def __init__(self, store: Store, owner: str) -> None:
        self.store = store
        self.owner = owner
        self._dest_blobs: dict[str, Any] = {}

    def process(self, record: Record) -> str:
        """Apply one record; returns its outcome (ready, failed, gone, done). Raises on a
        transient failure (the record stays journaled)."""
        return self.process_batch([record])[record.rid]

    def process_batch(self, records: list[Record]) -> dict[str, str]:
        """Apply records in journal order, in a few transactions for the whole batch (a burst
        of small saves costs the worker little CPU, so it competes little with training)."""
        from clearml_hooks.store import ingest
        from clearml_hooks.store.staging import SourceChanged, remove_staging

        catalog = self.store.catalog
        outcomes: dict[str, str] = {}
        snaps: list[tuple[Record, dict[str, Any]]] = []
        loads: list[Record] = []
        with catalog.write() as conn:
            for record in records:
                h = record.header
                kind = h.get("t")
                if kind == "task":
                    ingest.ingest_task_in(catalog, conn, h)
                elif kind == "status":
                    ingest.ingest_status_in(conn, h)
                elif kind == "snap":
                    snaps.append((record, ingest.ingest_snapshot_in(catalog, conn, h,
                                                                    self.owner)))
                    continue
                elif kind == "load":
                    loads.append(record)
                    continue
                outcomes[record.rid] = "done"
        finished: list[tuple[str, Any]] = []  # (rid, completion kwargs | failure reason)
        pending = [(r, row) for r, row in snaps if row["state"] == "pending"]
        inline = self._inline_files([r for r, _ in pending if not r.header.get("error")])
        ingest.pin_blobs(catalog, [(sha, rid) for rid, files in inline.items()
                                   if not isinstance(files, Exception) for sha, _ in files])
        for record, row in snaps:
            h = record.header
            if row["state"] != "pending":
                outcomes[record.rid] = row["state"]
            elif h.get("error"):
                finished.append((record.rid, h["error"]))
            else:
                try:
                    files = inline.get(record.rid, [])
                    if isinstance(files, Exception):
                        raise files
                    finished.append((record.rid, self._store_bytes(record, files)))
                except SourceChanged as exc:
                    finished.append((record.rid, str(exc)))
        if finished:
            with catalog.write() as conn:
                for rid, result in finished:
                    if isinstance(result, str):
                        changed = ingest.fail_in(conn, rid, result)
                    else:
                        changed = ingest.complete_in(conn, rid, **result)
                    # another processor (sync --force) may have finished it first
                    outcomes[rid] = ("failed" if isinstance(result, str) else "ready") \
                        if changed else (ingest.state_in(conn, rid) or "gone")
        for record, _row in snaps:
            remove_staging(record.header.get("staging") or [])
        for record in loads:  # after the snapshots: a load of a file just saved finds it
            self.load(record.header)
            outcomes[record.rid] = "done"
        return outcomes

    # -- snapshots ------------------------------------------------------------------------------

    def _blobs(self, dest: str | None):
        if not dest:
            return self.store.blobs
        blobs = self._dest_blobs.get(dest)
        if blobs is None:
            from clearml_hooks.store.blobs import open_blob_store

            blobs = self._dest_blobs[dest] = open_blob_store(dest)
        return blobs

    def _inline_files(self, records: list[Record]) -> dict[str, Any]:
        """(sha256, bytes) of every inline file, per snapshot, read once (pinned together in
        one transaction); a snapshot whose journal bytes are unreadable maps to its error."""
        from clearml_hooks.store.staging import SourceChanged

        out: dict[str, Any] = {}
        for record in records:
            offset = 0
            files = []
            try:
                for f in record.header["files"]:
                    if f["how"] == "inline":
                        data = _payload(record, offset, f["size"])
                        offset += f["size"]
                        files.append((hashlib.sha256(data).hexdigest(), data))
            except SourceChanged as exc:
                out[record.rid] = exc
                continue
            out[record.rid] = files
        return out

    def _store_bytes(self, record: Record,
                     inline: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Store every file's bytes; returns what ``complete_in`` needs. ``inline``: the
        inline files' (sha, bytes), already pinned by the caller; a staged file is pinned once
        hashed."""
        from clearml_hooks.store import ingest
        from clearml_hooks.store.blobs import BlobMismatch
        from clearml_hooks.store.staging import SourceChanged, StagedReader

        h = record.header
        catalog = self.store.catalog
        blobs = self._blobs(h.get("dest"))
        stored: list[tuple[str, str, int]] = []
        inline_files = iter(inline)
        for f in h["files"]:
            rel = f["rel"]
            if f["how"] == "inline":
                sha, data = next(inline_files)
                if not blobs.exists(sha):
                    got, _ = blobs.store_stream(io.BytesIO(data))
                    if got != sha:  # cannot happen: the bytes are in memory
                        raise SourceChanged(f"{rel}: stored bytes do not hash to {sha}")
                stored.append((rel, sha, len(data)))
                continue
            reader = StagedReader(f)
            sha, size = reader.read(hash_stream)
            if size != f["size"]:
                raise SourceChanged(f"{rel}: {f['size']} bytes were saved, {size} found: "
                                    + reader.changed_reason())
            ingest.pin_blob(catalog, sha, h["rid"])
            if not blobs.exists(sha):
                # copied, never moved: `sync --force` may be reading the same staged file
                try:
                    reader.read(functools.partial(blobs.store_stream, expect=sha))
                except BlobMismatch:
                    raise SourceChanged(f"{rel}: {reader.changed_reason()}") from None
            stored.append((rel, sha, size))
        if h["kind"] == "file" and len(stored) == 1:
            digest = stored[0][1]
            uri = blobs.url_for(digest)
        else:
            digest = manifest_digest(stored)
            uri = blobs.url_for(digest) + "?manifest"
        return {"files": stored, "digest": digest, "size": sum(sz for _, _, sz in stored),
                "uri": uri}

    # -- loads ----------------------------------------------------------------------------------

    def load(self, h: dict[str, Any]) -> None:
        """Connect a loaded file to the model that wrote it (path cache, then sha256)."""
        from clearml_hooks.store import ingest

        catalog = self.store.catalog
        files = [(p, os.path.basename(p)) for p in h["files"]] if h["kind"] == "files" else \
            _walk(h["path"], h["kind"])
        if not files:
            return
        match = None
        if h["kind"] == "file" and h.get("size") is not None:
            match = catalog.find_by_source(h["path"], h["size"], h["mtime_ns"])
        hashed = []
        for full, rel in files:
            try:
                with open(full, "rb", buffering=0) as f:
                    hashed.append((rel, *hash_stream(f)))
            except OSError:
                return  # gone or unreadable since it was loaded: no lineage, nothing blocked
        digest = hashed[0][1] if h["kind"] == "file" else manifest_digest(hashed)
        if match is None:
            match = catalog.find_by_digest(digest)
        if match is not None:
            catalog.link_model(h["task"], match["model_id"], "input", snapshot_id=match["id"])
        else:
            ingest.register_import(catalog, task_id=h["task"], path=h["path"], kind=h["kind"],
                                   framework=h["fw"], name=h["name"], digest=digest,
                                   hashed=hashed)
        ingest.adopt_parent(catalog, h["task"], h.get("ts"))


def _payload(record: Record, offset: int, size: int) -> bytes:
    """Inline bytes of a record; a damaged journal fails that snapshot, never blocks others."""
    from clearml_hooks.store.staging import SourceChanged

    try:
        return record.payload(offset, size)
    except OSError as exc:
        raise SourceChanged(f"the journal's copy of the bytes is unreadable: {exc}") from exc


def _walk(path: str, kind: str) -> list[tuple[str, str]]:
    from clearml_hooks.store.staging import walk_files

    return [(path, os.path.basename(path))] if kind == "file" else walk_files(path)


WORKER_NICE = 10


def _lower_priority() -> None:
    """Linux schedules threads on their own: a niced worker yields the CPU to training when
    both want it (hashing a large checkpoint would otherwise take a core from it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except (AttributeError, OSError):
        pass


class RecoverJob:
    """Queued once per process when the worker starts: finish dead processes' journals (so
    ``flush`` waits for them too, as a run that follows a crash expects)."""

    rid = "recover"
    header: dict[str, Any] = {"t": "recover"}


class Worker:
    """This process's background worker over its journal. Started on the first record."""

    def __init__(self, store: Store, journal: Journal) -> None:
        self.store = store
        self.journal = journal
        self.processor = Processor(store, journal.name)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._current: tuple[Record, float, int] | None = None
        self._waiters: dict[str, threading.Event] = {}
        self._outcomes: dict[str, str] = {}
        self._listeners: list[Callable[[Record, str], None]] = []
        self._warned = False
        self._recovery_queued = False
        self._pid = os.getpid()
        self.job_timeout = 600.0
        self.waiting_since: float | None = None  # set while a service is unreachable
        self.last_error: str | None = None

    def add_listener(self, fn: Callable[[Record, str], None]) -> None:
        self._listeners.append(fn)

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child has none of the parent's threads
            self._queue = queue.Queue()
            self._lock = threading.Lock()
            self._idle = threading.Condition(self._lock)
            self._outstanding = 0
            self._thread = None
            self._current = None
            self._waiters = {}
            self._recovery_queued = False
            self._pid = os.getpid()

    def submit(self, record: Record, *, start: bool = True) -> None:
        """Queue a journaled record; ``start=False`` leaves starting the thread to a later
        record, ``start()`` or the exit (a run that saves nothing never opens the catalog)."""
        self._check_fork()
        with self._lock:
            self._outstanding += 1
            if start:
                self._start_locked()
        self._queue.put(record)

    def start(self) -> None:
        """Start the thread now (e.g. to ingest the task record of a run that saves nothing)."""
        self._check_fork()
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if not self._recovery_queued:
            self._recovery_queued = True
            self._outstanding += 1
            self._queue.put(RecoverJob())
        if self._thread is None or not self._thread.is_alive():
            self._generation += 1
            self._thread = threading.Thread(target=self._run, args=(self._generation,),
                                            name="clearml-hooks-worker", daemon=True)
            self._thread.start()
            threading.Thread(target=self._watch, args=(self._generation,),
                             name="clearml-hooks-watchdog", daemon=True).start()

    def event_for(self, rid: str) -> threading.Event:
        with self._lock:
            event = self._waiters.get(rid)
            if event is None:
                event = self._waiters[rid] = threading.Event()
                if rid in self._outcomes:
                    event.set()
            return event

    def outcome(self, rid: str) -> str | None:
        return self._outcomes.get(rid)

    def outstanding(self) -> int:
        self._check_fork()
        with self._lock:
            return self._outstanding

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted record is resolved (or given up on); False on timeout."""
        self._check_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._outstanding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- the thread -----------------------------------------------------------------------------

    def _next_batch(self) -> list:
        """The next record, plus those that follow it closely: a burst of saves is taken in
        one go once it pauses (``QUIET`` s), so the worker does not interleave with it.

        While gathering, the thread sleeps and then takes what arrived, instead of waiting on
        the queue: a waiting thread would be woken by every save of the burst and take the GIL
        from the training thread each time; this way it wakes once per ``QUIET``.
        """
        batch = [self._queue.get()]
        if isinstance(batch[0], RecoverJob):
            return batch
        deadline = time.monotonic() + MAX_GATHER
        while len(batch) < MAX_BATCH and time.monotonic() < deadline:
            time.sleep(QUIET)
            arrived, recovery = self._take_arrived(MAX_BATCH - len(batch))
            batch.extend(arrived)
            if recovery or not arrived:
                break
        return batch

    def _take_arrived(self, limit: int) -> tuple[list, bool]:
        """Records queued so far (at most ``limit``), and whether a recovery job was among
        them (it goes back to the queue, to run after this batch)."""
        arrived: list = []
        recovery = False
        while len(arrived) < limit:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(record, RecoverJob):
                self._queue.put(record)
                recovery = True
                break
            arrived.append(record)
        return arrived, recovery

    def _run(self, generation: int) -> None:
        _lower_priority()
        while True:
            batch = self._next_batch()
            if generation != self._generation:
                for record in batch:  # abandoned: the newer thread takes them
                    self._queue.put(record)
                return
            self._current = (batch, time.monotonic(), generation)
            outcomes = self._process_with_retries(batch, generation)
            self._current = None
            if generation != self._generation:
                return  # the watchdog gave up on us and already counted these records
            for record in batch:
                self._resolved(record, outcomes.get(record.rid))

    def _process_with_retries(self, batch: list, generation: int) -> dict[str, str]:
        delay = 1.0
        failures = 0
        while True:
            try:
                if isinstance(batch[0], RecoverJob):
                    recover(self.store, own=self.journal.name)
                    return {RecoverJob.rid: "done"}
                outcomes = self.processor.process_batch(batch)
                self.waiting_since = None
                return outcomes
            except Exception as exc:
                if generation != self._generation:
                    return {}
                if is_transient(exc):
                    self._warn_waiting(exc)
                    time.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                    if self._current is not None:  # the wait is not the job hanging
                        self._current = (batch, time.monotonic(), generation)
                    continue
                if isinstance(batch[0], RecoverJob):
                    return {}
                if len(batch) > 1:  # find the record that fails, one at a time
                    outcomes = {}
                    for record in batch:
                        outcomes.update(self._process_with_retries([record], generation))
                    return outcomes
                failures += 1
                if failures < PERMANENT_ATTEMPTS:
                    time.sleep(0.2 * failures)
                    continue
                return {batch[0].rid: self._give_up(batch[0], exc)}

    def _give_up(self, record: Record, exc: BaseException) -> str:
        """A record that fails for a reason of its own: fail its snapshot loudly, move on."""
        reason = f"{type(exc).__name__}: {exc}"
        try:
            raise exc
        except Exception:
            try:
                contract.agent_error(f"processing a journaled {record.header.get('t')} record")
            except Exception:
                pass
        if record.header.get("t") == "snap" and not _fail_loudly(
                self.store, record, self.journal.name, reason):
            return "error"  # stays journaled: the next process tries again
        return "failed"

    def _warn_waiting(self, exc: BaseException) -> None:
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self._warned:
            self._warned = True
            log.warning("clearml-hooks: the model store is unreachable (%s); captured snapshots "
                        "wait in the local journal and are stored when it is back (or by the "
                        "next run, or `clearml-hooks sync`). Training is not affected.",
                        self.last_error[:300])

    def _resolved(self, record: Record, outcome: str | None) -> None:
        if isinstance(record, RecoverJob):
            with self._lock:
                self._outstanding -= 1
                if self._outstanding == 0:
                    self._idle.notify_all()
            return
        if outcome is not None and outcome != "error":
            try:
                self.journal.mark_done(record.rid)
            except Exception:
                pass
        for fn in self._listeners:
            try:
                fn(record, outcome or "error")
            except Exception:
                pass
        with self._lock:
            self._outcomes[record.rid] = outcome or "error"
            if len(self._outcomes) > 10000:  # waiters ask right after submitting: keep recent
                for rid in list(self._outcomes)[:5000]:
                    del self._outcomes[rid]
            event = self._waiters.pop(record.rid, None)
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.notify_all()
        if event is not None:
            event.set()

    def _watch(self, generation: int) -> None:
        """Abandon a job that hangs (a frozen server), so the records behind it go on."""
        while generation == self._generation:
            time.sleep(1.0)
            current = self._current
            if current is None or current[2] != generation:
                continue
            batch, started, _ = current
            size = sum(f.get("size", 0) for record in batch
                       for f in record.header.get("files") or [])
            limit = self.job_timeout + size / (20 << 20)
            if time.monotonic() - started > limit:
                log.warning("clearml-hooks: storing %d journaled record(s) took over %.0f s; "
                            "leaving them in the journal for the next run and going on with "
                            "the others", len(batch), limit)
                with self._lock:
                    self._generation += 1
                    self._thread = None
                    self._current = None
                for record in batch:
                    self._resolved(record, "error")
                self.start()
                return


# -- recovery of dead processes' journals -------------------------------------------------------

class RecoveryResult:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.skipped_alive = 0
        self.errors: list[str] = []


def recover(store: Store, *, force: bool = False, own: str | None = None,
            progress: Callable[[], None] | None = None, rows_only: bool = False) -> RecoveryResult:
    """Finish every journal whose process is gone (``force``: also of live ones; only
    idempotent steps, so a live process and this one never undo each other).

    ``rows_only`` (readers such as ``models list``): put the tasks and pending snapshots in the
    catalog so they show, and leave storing the bytes to ``sync`` or the next run.
    """
    from clearml_hooks.store.journal import (
        all_journal_dirs,
        read_records,
        remove_journal_dir,
        try_lock,
    )
    from clearml_hooks.store.staging import remove_staging

    result = RecoveryResult()
    for path in all_journal_dirs(store.journal_roots):
        owner = os.path.basename(path)
        if owner == own:
            continue
        fd = try_lock(path)
        if fd is None and not force:
            result.skipped_alive += 1
            continue
        try:
            records, done = read_records(path)
            processor = Processor(store, owner)
            complete = True
            for record in records:
                if record.header.get("t") not in WORK or record.rid in done:
                    continue
                try:
                    if rows_only and record.header.get("t") == "snap":
                        from clearml_hooks.store import ingest

                        ingest.ingest_snapshot(store.catalog, record.header, owner)
                        complete = False
                        continue
                    outcome = processor.process(record)
                except Exception as exc:
                    if is_transient(exc):
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                        complete = False
                        break
                    outcome = "failed"
                    result.errors.append(f"{record.rid}: {type(exc).__name__}: {exc}")
                    if record.header.get("t") == "snap" and not _fail_loudly(
                            store, record, owner, f"{type(exc).__name__}: {exc}"):
                        complete = False
                        continue  # not marked done: the next recovery tries again
                if record.header.get("t") == "snap":
                    result.items.append({"rid": record.rid, "outcome": outcome,
                                         "name": record.header.get("name"),
                                         "source": record.header.get("src")})
                if fd is not None:
                    _append_done(path, record.rid)
                if progress is not None:
                    progress()
            if complete and fd is not None:
                remove_staging([os.path.join(store.staging_root, owner)])
                remove_journal_dir(path)
        finally:
            if fd is not None:
                os.close(fd)
    _remove_orphan_staging(store, own)
    for root in store.journal_roots:
        _remove_unborn_journals(root)
    sweep = None if rows_only else getattr(store.blobs, "sweep_incoming", None)
    if sweep is not None:
        try:
            sweep()  # temporaries of uploads cut off by a crash
        except Exception as exc:
            result.errors.append(f"sweeping temporary blobs: {type(exc).__name__}: {exc}")
    return result


def _remove_unborn_journals(root: str) -> None:
    """A journal folder is made under a hidden name and renamed once locked: a hidden one
    that is old belongs to a process that died in between."""
    from clearml_hooks.store.journal import remove_journal_dir

    try:
        names = [n for n in os.listdir(root) if n.startswith(".new-")]
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            if time.time() - os.lstat(path).st_mtime > ORPHAN_AGE:
                remove_journal_dir(path)
        except OSError:
            pass


ORPHAN_AGE = 3600.0


def _fail_loudly(store: Store, record: Record, owner: str, reason: str) -> bool:
    """A snapshot that cannot be processed ends failed with its reason, never silently."""
    from clearml_hooks.store import ingest

    try:
        ingest.ingest_snapshot(store.catalog, record.header, owner)
        ingest.fail_snapshot(store.catalog, record.rid, reason)
        return True
    except Exception:
        return False


def _remove_orphan_staging(store: Store, own: str | None) -> None:
    """Staging of a process that died before it journaled anything (no journal folder),
    once older than any save in progress could be."""
    from clearml_hooks.store.staging import remove_staging

    try:
        names = os.listdir(store.staging_root)
    except OSError:
        return
    journals = set()
    for root in store.journal_roots:
        try:
            journals |= set(os.listdir(root))
        except OSError:
            pass
    for name in names:
        if name == own or name in journals:
            continue
        path = os.path.join(store.staging_root, name)
        try:
            old = time.time() - os.lstat(path).st_mtime > ORPHAN_AGE
        except OSError:
            continue
        if old:
            remove_staging([path])


def _append_done(journal_dir: str, rid: str, _files: dict[str, str] = {}) -> None:  # noqa: B006
    """Done marks of a recovery go to a file of their own: the dead owner's last segment may
    end in a torn record, after which nothing would be read."""
    import json

    path = _files.get(journal_dir)
    if path is None or not os.path.exists(path):
        path = _files[journal_dir] = os.path.join(journal_dir, f"zz-{os.urandom(8).hex()}.log")
    line = json.dumps({"t": "done", "rid": rid, "n": 0}, separators=(",", ":")).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
