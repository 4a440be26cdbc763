"""Finishing the journals of processes that died (or, with ``force``, of live ones).

Run by every worker once at its start, by ``clearml-hooks sync`` and by read commands
(``rows_only``); only idempotent steps, so two of them never undo each other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clearml_hooks.store.journal import WORK, Record
from clearml_hooks.store.processor import Processor, is_transient

if TYPE_CHECKING:
    from clearml_hooks.store import Store


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
                    if record.header.get("t") == "snap" and not fail_loudly(
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


def fail_loudly(store: Store, record: Record, owner: str, reason: str) -> bool:
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
