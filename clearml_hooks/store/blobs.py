"""Content-addressed blob stores: bytes named by their sha256, so identical snapshots are stored once.

``LocalBlobStore`` is the embedded default (a folder; a staged file is *moved* in, no copy).
``FsspecBlobStore`` serves any fsspec URL (``s3://``, ``gs://``, ``az://``, ``memory://``).
Stores are found by URL scheme through the ``clearml_hooks.blob_stores`` entry-point group.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Protocol

CHUNK = 1 << 20


class BlobStore(Protocol):
    url: str

    def exists(self, sha: str) -> bool: ...

    def put(self, local_path: str, sha: str, *, move: bool) -> None: ...

    def fetch(self, sha: str, dest: str) -> None: ...

    def url_for(self, sha: str) -> str: ...

    def delete(self, sha: str) -> None: ...

    def writable(self) -> None: ...


def _key(sha: str) -> str:
    return f"{sha[:2]}/{sha}"


class LocalBlobStore:
    """Blobs in a local folder: ``<root>/ab/abcdef...``."""

    def __init__(self, url: str, **_: Any) -> None:
        self.root = os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)
        self.url = "file://" + self.root
        os.makedirs(self.root, exist_ok=True)

    def path_for(self, sha: str) -> str:
        return os.path.join(self.root, sha[:2], sha)

    def exists(self, sha: str) -> bool:
        return os.path.exists(self.path_for(sha))

    def put(self, local_path: str, sha: str, *, move: bool) -> None:
        dest = self.path_for(sha)
        if os.path.exists(dest):
            if move:
                os.unlink(local_path)
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if move:
            try:
                os.replace(local_path, dest)  # atomic, same filesystem: no bytes copied
                return
            except OSError:
                pass
        tmp = f"{dest}.{os.getpid()}.tmp"
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, dest)
        if move:
            os.unlink(local_path)

    def fetch(self, sha: str, dest: str) -> None:
        tmp = f"{dest}.{os.getpid()}.tmp"
        shutil.copyfile(self.path_for(sha), tmp)
        os.replace(tmp, dest)

    def url_for(self, sha: str) -> str:
        return "file://" + self.path_for(sha)

    def delete(self, sha: str) -> None:
        try:
            os.unlink(self.path_for(sha))
        except FileNotFoundError:
            pass

    def writable(self) -> None:
        probe = os.path.join(self.root, f".probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)


def fsspec_options(url: str) -> dict:
    """Storage options from the environment: S3-compatible endpoints (SeaweedFS, MinIO)."""
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("CLEARML_HOOKS_S3_ENDPOINT_URL") or os.environ.get(
            "AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, Any] = {}
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        key = os.environ.get("CLEARML_HOOKS_S3_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("CLEARML_HOOKS_S3_SECRET") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            options.update(key=key, secret=secret)
        return options
    return {}


class FsspecBlobStore:
    """Blobs under any fsspec URL prefix; uploads and downloads stream, never whole in memory."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        import fsspec

        self.url = url.rstrip("/")
        options = {**fsspec_options(url), **storage_options}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        self.root = self.root.rstrip("/")
        self.protocol = url.split("://", 1)[0]

    def _path(self, sha: str) -> str:
        return f"{self.root}/{_key(sha)}"

    def exists(self, sha: str) -> bool:
        return self.fs.exists(self._path(sha))

    def put(self, local_path: str, sha: str, *, move: bool) -> None:
        if not self.exists(sha):
            self.fs.put_file(local_path, self._path(sha))
        if move:
            os.unlink(local_path)

    def fetch(self, sha: str, dest: str) -> None:
        tmp = f"{dest}.{os.getpid()}.tmp"
        self.fs.get_file(self._path(sha), tmp)
        os.replace(tmp, dest)

    def url_for(self, sha: str) -> str:
        return f"{self.protocol}://{self._path(sha)}"

    def delete(self, sha: str) -> None:
        try:
            self.fs.rm_file(self._path(sha))
        except FileNotFoundError:
            pass

    def writable(self) -> None:
        probe = f"{self.root}/.probe-{os.getpid()}"
        self.fs.pipe_file(probe, b"")
        self.fs.rm_file(probe)


def open_blob_store(url: str) -> BlobStore:
    """Pick the blob store class for a URL's scheme (entry points, then the built-ins)."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    builtin = {"file": LocalBlobStore}
    cls = builtin.get(scheme)
    if cls is None:
        from importlib.metadata import entry_points

        for ep in entry_points(group="clearml_hooks.blob_stores"):
            if ep.name == scheme:
                cls = ep.load()
                break
    if cls is None:
        raise ValueError(f"unsupported storage URL scheme {scheme!r} in {url!r}; supported: "
                         + ", ".join(supported_schemes())
                         + " (or install a package that registers it)")
    return cls(url)


def supported_schemes() -> list[str]:
    """Every scheme a blob store is registered for (built-in and third-party)."""
    from importlib.metadata import entry_points

    from clearml_hooks.config import BUILTIN_BLOB_SCHEMES

    return sorted({*BUILTIN_BLOB_SCHEMES,
                   *(ep.name for ep in entry_points(group="clearml_hooks.blob_stores"))})
