"""The capture pipeline: protect + journal in the training thread, hash + store in the background.

In the training thread a save costs one hard link (or reflink) per file and one short catalog
transaction; the bytes are never copied there unless the filesystem allows nothing better. A
background worker then hashes each staged file while copying it into the content-addressed
blob store, and marks the snapshot ready. A snapshot left pending by a crash is finished by the
next process that opens the store (``recover``) or by ``clearml-hooks sync``.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from clearml_hooks.hooks import contract
from clearml_hooks.hooks.binding import Location

if TYPE_CHECKING:
    from clearml_hooks.hooks.registry import Hook
    from clearml_hooks.store import Store

log = logging.getLogger("clearml_hooks")

CHUNK = 1 << 20
ORPHAN_AGE = 3600.0  # seconds before an unjournaled staging folder counts as abandoned
RETRIES = 3  # background retries of a snapshot whose storing failed (unreachable object store)
RETRY_DELAY = 5.0  # seconds before the first retry; x4 each time
FICLONE = 0x40049409  # linux/fs.h


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _process_start() -> str:
    return _start_time(os.getpid()) or str(int(time.time()))


HOST = os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")
OWNER = f"{HOST}:{os.getpid()}:{_process_start()}"


def _refresh_owner() -> None:
    global OWNER
    OWNER = f"{HOST}:{os.getpid()}:{_process_start()}"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_owner)


def owner_alive(owner: str | None) -> bool:
    """Is the process that journaled a snapshot still running? Unknown hosts count as alive."""
    if not owner:
        return False
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != HOST:
        return True
    started = _start_time(pid)
    if started is not None:
        return started == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not os.path.exists("/proc/self")  # no /proc: trust kill(0)


def _reflink(src: str, dst: str) -> bool:
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        return True
    except OSError:
        try:
            os.unlink(dst)
        except OSError:
            pass
        return False


def protect(src: str, dst: str) -> str:
    """Make ``dst`` hold ``src``'s current bytes, as cheaply as the filesystem allows."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
        return "link"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    if _reflink(src, dst):
        return "reflink"
    import shutil

    shutil.copyfile(src, dst)
    return "copy"


def location_files(location: Location) -> list[tuple[str, str]]:
    """(absolute path, relative name) of every file a location covers."""
    if location.kind == "file":
        path = os.path.abspath(location.path)
        return [(path, os.path.basename(path))]
    if location.kind == "files":
        return [(os.path.abspath(p), os.path.basename(p)) for p in location.files]
    root = os.path.abspath(location.path)
    out = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            out.append((full, os.path.relpath(full, root)))
    return sorted(out, key=lambda item: item[1])


def hash_and_copy(src: str, dst_tmp: str | None) -> tuple[str, int]:
    """One read pass: sha256 of ``src``, copying it to ``dst_tmp`` on the way if given."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as f:
        out = open(dst_tmp, "wb", buffering=0) if dst_tmp else None
        try:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
                if out is not None:
                    out.write(view[:n])
                size += n
        finally:
            if out is not None:
                out.close()
    return h.hexdigest(), size


def manifest_digest(files: list[tuple[str, str, int]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for rel, sha, size in sorted(files):
        h.update(f"{rel}\0{sha}\0{size}\n".encode())
    return h.hexdigest()


class Recover:
    """Job: finish the snapshots that a dead process left pending."""


class _Load:
    """Job: resolve which model a loaded file came from."""

    __slots__ = ("task_id", "path", "kind", "files", "framework", "name")

    def __init__(self, task_id: str, path: str, kind: str, files: tuple[str, ...],
                 framework: str, name: str) -> None:
        self.task_id, self.path, self.kind = task_id, path, kind
        self.files, self.framework, self.name = files, framework, name


class Pipeline:
    """Per-process worker that finishes snapshots and resolves loads, in order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._outstanding = 0
        self._idle = threading.Condition(self._lock)
        self._pid = os.getpid()
        self._attempts: dict[str, int] = {}

    def _reset_after_fork(self) -> None:
        """A forked child inherits the queue and locks mid-use by threads it does not have."""
        self._queue = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0
        self._thread = None
        self._pid = os.getpid()

    def submit(self, job: Any) -> None:
        if self._pid != os.getpid():
            self._reset_after_fork()
        with self._lock:
            self._outstanding += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="clearml-hooks-worker",
                                                daemon=True)
                self._thread.start()
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if isinstance(job, _Load):
                    self.resolve_load(job)
                elif isinstance(job, Recover):
                    self.recover()
                else:
                    self.finish_snapshot(job)
            except Exception:
                if isinstance(job, str):
                    self._retry_later(job)
                try:
                    contract.agent_error("storing a snapshot in the background")
                except Exception:
                    pass  # strict mode: already logged; the worker must keep going
            finally:
                with self._lock:
                    self._outstanding -= 1
                    if self._outstanding == 0:
                        self._idle.notify_all()

    def _retry_later(self, snapshot_id: str) -> None:
        """An unreachable object store is usually back soon: try again while we live (the
        snapshot stays pending in the catalog meanwhile, for the next process or ``sync``)."""
        attempt = self._attempts.get(snapshot_id, 0) + 1
        self._attempts[snapshot_id] = attempt
        if attempt > RETRIES:
            return
        timer = threading.Timer(RETRY_DELAY * 4 ** (attempt - 1), self.submit, args=(snapshot_id,))
        timer.daemon = True
        timer.start()

    def retry_pending(self, snapshot_ids: list[str]) -> None:
        """Submit again snapshots of ours that are still pending (a last try at exit)."""
        for snapshot_id in snapshot_ids:
            self.submit(snapshot_id)

    def outstanding(self) -> int:
        if self._pid != os.getpid():
            self._reset_after_fork()
        with self._lock:
            return self._outstanding

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job is done; False on timeout."""
        if self._pid != os.getpid():
            self._reset_after_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._outstanding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- snapshots ------------------------------------------------------------------------------

    def finish_snapshot(self, snapshot_id: str) -> bool:
        """Hash the staged files into the blob store and mark the snapshot ready."""
        catalog = self.store.catalog
        snap = catalog.snapshot(snapshot_id)
        if snap is None or snap["state"] != "pending":
            return False
        staging = snap["staging"]
        blobs = self.store.blobs
        stored: list[tuple[str, str, int]] = []
        local_root = getattr(blobs, "root", None) if hasattr(blobs, "path_for") else None
        for f in snap["files"]:
            staged = os.path.join(staging, f["relpath"])
            if not os.path.exists(staged):
                catalog.fail_snapshot(snapshot_id, f"staged file {staged} is missing")
                return False
            if local_root is not None:
                sha, size = hash_and_copy(staged, None)
                if not blobs.exists(sha):  # identical bytes already stored: no copy at all
                    # copy and hash in one pass, so the blob's bytes are the ones hashed
                    tmp = os.path.join(local_root, f".incoming-{snapshot_id}-{len(stored)}")
                    copied_sha, size = hash_and_copy(staged, tmp)
                    if copied_sha != sha:
                        os.unlink(tmp)
                        catalog.fail_snapshot(snapshot_id, f"{f['relpath']} changed while it "
                                              "was stored")
                        return False
                    blobs.put(tmp, sha, move=True)
            else:
                sha, size = hash_and_copy(staged, None)
                blobs.put(staged, sha, move=False)
            if size != f["size"]:
                catalog.fail_snapshot(snapshot_id, f"{f['relpath']} changed while it was stored "
                                      f"({f['size']} bytes journaled, {size} found)")
                return False
            stored.append((f["relpath"], sha, size))
        if snap["kind"] == "file" and len(stored) == 1:
            digest = stored[0][1]
            uri = blobs.url_for(digest)
        else:
            digest = manifest_digest(stored)
            uri = blobs.url_for(digest) + "?manifest"
        catalog.complete_snapshot(snapshot_id, files=stored, digest=digest,
                                  size=sum(s for _, _, s in stored), uri=uri)
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        return True

    def recover(self, *, force: bool = False) -> list[str]:
        """Finish snapshots whose process died (or every pending one with ``force``)."""
        catalog = self.store.catalog
        done = []
        for snap in catalog.pending_snapshots():
            if snap["owner"] == OWNER:
                continue
            if not force and owner_alive(snap["owner"]):
                continue
            if catalog.claim_snapshot(snap["id"], snap["owner"], OWNER) and self.finish_snapshot(
                    snap["id"]):
                done.append(snap["id"])
        self.remove_orphan_staging()
        return done

    def remove_orphan_staging(self, min_age: float = ORPHAN_AGE) -> list[str]:
        """Staging folders no pending snapshot points at (a crash between the hard link and the
        journal), once they are older than any save in progress could be."""
        import shutil

        root = self.store.staging_root
        try:
            names = os.listdir(root)
        except OSError:
            return []
        referenced = {os.path.basename(snap["staging"] or "")
                      for snap in self.store.catalog.pending_snapshots()}
        removed = []
        for name in names:
            path = os.path.join(root, name)
            try:
                old = time.time() - os.lstat(path).st_mtime > min_age
            except OSError:
                continue
            if name not in referenced and old:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    # -- loads ----------------------------------------------------------------------------------

    def resolve_load(self, job: _Load) -> None:
        """Connect a loaded file to the model that wrote it (path cache, then hash)."""
        from clearml_hooks.store import schema as s

        catalog = self.store.catalog
        files = [(p, os.path.basename(p)) for p in job.files] if job.kind == "files" else \
            location_files(Location(job.path, job.kind))  # type: ignore[arg-type]
        if not files:
            return
        match = None
        if job.kind == "file":
            st = os.stat(job.path)
            match = catalog.find_by_source(job.path, st.st_size, st.st_mtime_ns)
        hashed = [(rel, *hash_and_copy(full, None)) for full, rel in files]
        digest = hashed[0][1] if job.kind == "file" else manifest_digest(hashed)
        if match is None:
            match = catalog.find_by_digest(digest)
        if match is not None:
            catalog.link_model(job.task_id, match["model_id"], "input", snapshot_id=match["id"])
            return
        # never seen: register it as an imported model that points at the file itself
        from clearml_hooks.store.catalog import new_id, now

        uri = "file://" + job.path
        with catalog.write() as conn:
            project_id = conn.execute(s.tasks.select().with_only_columns(s.tasks.c.project_id)
                                      .where(s.tasks.c.id == job.task_id)).scalar()
            model_id = catalog.insert_model(
                conn, project_id=project_id, task_id=None, name=job.name, origin="imported",
                framework=job.framework, uri=uri, ready=True, is_package=job.kind != "file")
            snapshot_id = new_id()
            conn.execute(s.snapshots.insert().values(
                id=snapshot_id, model_id=model_id, version=1, state="ready", kind=job.kind,
                source_path=job.path, digest=digest, size=sum(h[2] for h in hashed),
                created=now(), completed=now()))
            conn.execute(s.snapshot_files.insert(), [
                {"snapshot_id": snapshot_id, "relpath": rel, "sha256": sha, "size": size}
                for rel, sha, size in hashed])
            conn.execute(s.models.update().where(s.models.c.id == model_id).values(
                latest_snapshot_id=snapshot_id))
        catalog.link_model(job.task_id, model_id, "input", snapshot_id=snapshot_id)


class Capturer:
    """The hooks' sink for one task: turns hooked calls into journaled snapshots."""

    def __init__(self, store: Store, task_id: str, *, offline: bool = False) -> None:
        self.store = store
        self.task_id = task_id
        self.offline = offline
        self.pipeline = Pipeline(store)
        self.stats: Counter[str] = Counter()
        self.iteration: int | None = None
        self._protected: dict[tuple[int, int], str] = {}  # (dev, inode) -> user's path
        self._seen_loads: set[tuple] = set()
        self._lock = threading.Lock()
        self.registered = threading.Event()  # set once the task row exists in the catalog
        self._device: int | None = None
        self._models: dict[str, tuple[str, int]] = {}  # source -> (model id, next version)

    # -- CaptureSink ----------------------------------------------------------------------------

    def skipped(self, reason: str) -> None:
        self.stats[f"skipped_{reason}"] += 1

    @property
    def protecting(self) -> bool:
        return bool(self._protected)

    def before_save(self, path: str) -> None:
        """Break our hard links before the framework rewrites files in place.

        Covers the path itself, the files of a directory, and the files of a checkpoint
        prefix (``ckpt.index``, ``ckpt.data-00000-of-00001``): only files the save rewrites, as
        unsharing means unlinking the user's path.
        """
        if not self._protected:
            return
        absolute = os.path.abspath(path)
        with self._lock:
            protected = list(self._protected.items())
        for key, source in protected:
            if source == absolute or source.startswith((absolute + os.sep, absolute + ".")):
                self._unshare(source, key)

    def _unshare(self, path: str, key: tuple[int, int]) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) != key or st.st_nlink < 2:
            with self._lock:  # already stored (staging gone) or replaced: nothing to protect
                if st.st_nlink < 2 or (st.st_dev, st.st_ino) != key:
                    self._protected.pop(key, None)
            return
        os.unlink(path)  # the framework's write now creates a new file; ours keeps the old
        self.stats["links_broken"] += 1
        with self._lock:
            self._protected.pop(key, None)

    def saved(self, hook: Hook | None, location: Location, framework: str) -> None:
        files = location_files(location)
        if not files:
            self.stats["skipped_nothing_written"] += 1
            return
        source = os.path.abspath(location.path)
        token = os.urandom(16).hex()
        staging = self._staging_for(files[0][0], token)
        journal_files = []
        linked = []
        for full, rel in files:
            how = protect(full, os.path.join(staging, rel))
            st = os.stat(os.path.join(staging, rel))
            journal_files.append((rel, st.st_size))
            if how == "link":
                linked.append(((st.st_dev, st.st_ino), full))
            self.stats[f"protected_by_{how}"] += 1
        try:
            src_stat = os.stat(files[0][0]) if location.kind == "file" else None
        except OSError:
            src_stat = None
        iteration = location.iteration if location.iteration is not None else self.iteration
        name = os.path.basename(source.rstrip(os.sep)) or source
        self.registered.wait(120)
        model_id, snapshot_id, version = self.store.catalog.journal_snapshot(
            task_id=self.task_id, source=source, name=name, framework=framework,
            kind=location.kind, staging=staging, files=journal_files, iteration=iteration,
            owner=OWNER, source_size=src_stat.st_size if src_stat else None,
            source_mtime_ns=src_stat.st_mtime_ns if src_stat else None,
            known=self._models.get(source))
        self._models[source] = (model_id, version + 1)
        with self._lock:
            for key, full in linked:
                self._protected[key] = full
        self.stats["saves"] += 1
        if not self.offline:
            self.pipeline.submit(snapshot_id)

    def _staging_for(self, first_file: str, token: str) -> str:
        """A staging folder on the same filesystem as the saved file, so a hard link works.

        Normally ``<home>/staging``; for a file on another filesystem, a hidden folder beside it
        (removed once the snapshot is stored) rather than a full copy in the training thread.
        """
        home = os.path.join(self.store.staging_root, token)
        try:
            if os.stat(first_file).st_dev == self._staging_device():
                return home
            folder = os.path.dirname(first_file)
            if os.access(folder, os.W_OK):
                return os.path.join(folder, f".clearml-hooks-staging-{token}")
        except OSError:
            pass
        return home

    def _staging_device(self) -> int:
        if self._device is None:
            os.makedirs(self.store.staging_root, exist_ok=True)
            self._device = os.stat(self.store.staging_root).st_dev
        return self._device

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
        self.registered.wait(120)
        name = os.path.basename(path.rstrip(os.sep))
        self.pipeline.submit(_Load(self.task_id, path, location.kind, tuple(
            os.path.abspath(p) for p in location.files), framework, name))

    # -- lifecycle ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        return self.pipeline.wait(timeout)
