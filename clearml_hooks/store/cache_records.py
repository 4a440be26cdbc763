"""Sidecar records of cached files whose sha256 was checked, so a read re-hashes only what changed.

A cached copy is trusted only while its (size, mtime_ns, ctime_ns, inode) are the ones recorded
right after it was verified; an in-place write or a replaced file changes them and the copy is
verified again (and fetched again if its bytes differ).
"""

from __future__ import annotations

import json
import os
import stat as _stat
from typing import Any

from clearml_hooks.store.blobs import temp_name


def stamp(path: str) -> list[int] | None:
    """What changes when a file is written or replaced; None unless a regular file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not _stat.S_ISREG(st.st_mode):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def tree_stamps(folder: str) -> dict[str, list[int] | None]:
    """Stamps of every file under ``folder`` (relative names), symlinks included as None."""
    out: dict[str, list[int] | None] = {}
    for base, _dirs, names in os.walk(folder):
        for name in names:
            full = os.path.join(base, name)
            out[os.path.relpath(full, folder)] = stamp(full)
    return out


class CacheRecord:
    """One JSON sidecar (``<cache entry>.verified``) mapping keys to what was verified."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: dict[str, Any] = self._load()
        self._dirty = False

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def trusted(self, key: str, sha: str, path: str) -> bool:
        """``path`` was verified to hash to ``sha`` and has not changed since."""
        entry = self.entries.get(key)
        current = stamp(path)
        return (isinstance(entry, dict) and entry.get("sha256") == sha and current is not None
                and entry.get("stamp") == current)

    def mark(self, key: str, sha: str, path: str) -> None:
        """Record ``path`` as verified for ``sha`` (call right after hashing it)."""
        self.set(key, {"sha256": sha, "stamp": stamp(path)})

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def set(self, key: str, value: Any) -> None:
        if self.entries.get(key) != value:
            self.entries[key] = value
            self._dirty = True

    def forget(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self._dirty = True

    def save(self) -> None:
        """Write atomically; a concurrent reader sees the old or the new record, never half."""
        if not self._dirty:
            return
        tmp = os.path.join(os.path.dirname(self.path) or ".", temp_name(".record"))
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                json.dump({"version": 1, "entries": self.entries}, f)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._dirty = False
