"""Getting a model's bytes: blobs from the content-addressed stores into the verified cache,
and weights registered by URL (local paths as they are, remote files downloaded)."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from clearml_hooks.store import Store

_BLOB_URL = re.compile(r"^(?P<root>.+)/(?P<prefix>[0-9a-f]{2})/(?P<sha>[0-9a-f]{64})(\?manifest)?$")

_blob_stores: dict[str, Any] = {}
_blob_lock = threading.Lock()


def blob_store(url: str):
    from clearml_hooks.store.blobs import open_blob_store

    with _blob_lock:
        store = _blob_stores.get(url)
        if store is None:
            store = _blob_stores[url] = open_blob_store(url)
        return store


def forget_blob_store(url: str) -> None:
    """Drop a cached blob store (one that failed), so the next use opens it again."""
    with _blob_lock:
        _blob_stores.pop(url, None)


def same_store(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        u = u.rstrip("/")
        if u.startswith("file://"):
            u = u[len("file://"):]
        return os.path.abspath(u) if "://" not in u else u

    return norm(a) == norm(b)


def stores_holding(store: Store, uri: str | None) -> list:
    """The store's blob store, plus the one a content-addressed URL points into."""
    out = [store.blobs]
    m = _BLOB_URL.match(uri or "")
    if m and not same_store(m.group("root"), store.blobs.url):
        try:
            out.append(blob_store(m.group("root")))
        except Exception:
            pass
    return out


def materialize(store: Store, uri: str | None, sha: str, size: int, target: str,
                 force: bool, record: Any, key: str, what: str) -> None:
    """Put the blob's bytes at ``target``, verified against ``sha``.

    A cached copy is trusted only if ``record`` saw it verified and it has not changed since;
    otherwise it is hashed, and fetched again if it differs. ``what`` names the model version.
    """
    from clearml_hooks.store.blobs import BlobMismatch

    if not force and cached_copy_ok(target, sha, size, record, key):
        return
    record.forget(key)
    if os.path.lexists(target) and not os.path.isdir(target):
        os.unlink(target)  # ours, and wrong: never left where a reader could take it
    os.makedirs(os.path.dirname(target), exist_ok=True)
    errors: list[Exception] = []
    for blobs in stores_holding(store, uri):
        try:
            blobs.fetch(sha, target)  # verified while it streams; target replaced only if good
        except Exception as exc:  # try the next store that may hold it
            errors.append(exc)
            continue
        record.mark(key, sha, target)
        return
    corrupt = [e for e in errors if isinstance(e, BlobMismatch)]
    if corrupt:
        raise ValueError(f"{what}: the stored bytes of {key} do not match their sha256, so "
                         f"they are not handed out: {corrupt[0]}")
    raise ValueError(f"{what}: blob {sha} of {key} is in none of the blob stores: "
                     f"{errors[-1] if errors else 'no store'}")


def cached_copy_ok(target: str, sha: str, size: int, record: Any, key: str) -> bool:
    """A cached file holds exactly ``sha``: as recorded, or hashed now (unchanged meanwhile)."""
    from clearml_hooks.store.blobs import sha256_of
    from clearml_hooks.store.cache_records import stamp

    if record.trusted(key, sha, target):
        return True
    before = stamp(target)
    if before is None or before[0] != size:
        return False
    got, _ = sha256_of(target)
    if got != sha or stamp(target) != before:
        return False
    record.set(key, {"sha256": sha, "stamp": before})
    return True


def fetch_url(store: Store, uri: str, force: bool) -> str:
    """A local path for a registered URL: local files as they are, remote ones downloaded."""
    from clearml_hooks.store import model_ops

    path = model_ops.local_path_of(uri)
    if path is not None:
        if not os.path.exists(path):
            raise ValueError(f"the model's file {path} does not exist")
        return path
    from clearml_hooks.models.downloads import cached_download

    return cached_download(store.cache_dir, uri, force)
