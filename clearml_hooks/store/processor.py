"""Journal records -> catalog rows and stored blobs: one batch or one record at a time.

Idempotent: the live worker, ``clearml-hooks sync`` and a reader recovering a dead run may all
process the same record; a transient failure (a service down) raises, to be retried.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from typing import TYPE_CHECKING, Any

from clearml_hooks.store.journal import Record
from clearml_hooks.store.safe_paths import catalog_text

if TYPE_CHECKING:
    from clearml_hooks.store import Store

CHUNK = 1 << 20
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
            blobs = self._dest_blobs[dest] = self.store.open_other_blobs(dest)
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
            rel = catalog_text(f["rel"])
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
            match = catalog.find_by_source(catalog_text(h["path"]), h["size"], h["mtime_ns"])
        hashed = []
        for full, rel in files:
            try:
                with open(full, "rb", buffering=0) as f:
                    hashed.append((catalog_text(rel), *hash_stream(f)))
            except OSError:
                return  # gone or unreadable since it was loaded: no lineage, nothing blocked
        digest = hashed[0][1] if h["kind"] == "file" else manifest_digest(hashed)
        if match is None:
            match = catalog.find_by_digest(digest)
        if match is not None:
            catalog.link_model(h["task"], match["model_id"], "input", snapshot_id=match["id"])
        else:
            ingest.register_import(catalog, task_id=h["task"], path=catalog_text(h["path"]),
                                   kind=h["kind"], framework=h["fw"],
                                   name=catalog_text(h["name"]), digest=digest,
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
