"""Content-addressed blob stores: bytes named by their sha256, so identical snapshots are stored once.

``LocalBlobStore`` is the embedded default (a folder). ``FsspecBlobStore`` serves any fsspec URL
(``s3://``, ``gs://``, ``az://``, ``memory://``). Stores are found by URL scheme through the
``clearml_hooks.blob_stores`` entry-point group.

Invariant of both: the object under a sha256 key has that sha256. Bytes are hashed while they are
written to a temporary name unique per process and call, and only then renamed (local) or
server-side copied (remote) to their key, so a source rewritten mid-read can never leave bytes
under a key they do not hash to. ``fetch`` verifies too: a truncated or flipped blob is an error.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
import uuid
from typing import Any, BinaryIO, Protocol

from clearml_hooks.store.safe_paths import check_sha256

CHUNK = 1 << 20
INCOMING = ".incoming"  # temp names start with this (local: files in the root; remote: a prefix)
DEFAULT_S3_CONNECT_TIMEOUT = 10.0
DEFAULT_S3_READ_TIMEOUT = 20.0
S3_MAX_ATTEMPTS = 2  # botocore attempts per call; s3fs's own retry loop is switched off


class BlobMismatch(ValueError):
    """Bytes that do not hash to the sha256 they are stored or fetched under."""


class BlobStore(Protocol):
    url: str

    def exists(self, sha: str) -> bool: ...

    def store_stream(self, fileobj: BinaryIO, expect: str | None = None) -> tuple[str, int]: ...

    def put(self, local_path: str, sha: str, *, move: bool) -> None: ...

    def fetch(self, sha: str, dest: str) -> None: ...

    def url_for(self, sha: str) -> str: ...

    def delete(self, sha: str) -> None: ...

    def writable(self) -> None: ...

    def sweep_incoming(self, older_than: float = 86400.0) -> int: ...


def temp_name(prefix: str = INCOMING) -> str:
    """A temporary name unique per process and per call, so two writers never share one."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex}"


def _key(sha: str) -> str:
    check_sha256(sha)
    return f"{sha[:2]}/{sha}"


def copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` in 1 MiB chunks, hashing exactly the bytes written."""
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)


def sha256_of(path: str) -> tuple[str, int]:
    """sha256 and size of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _mismatch(sha: str, got: str, size: int, where: str) -> BlobMismatch:
    return BlobMismatch(f"blob {sha} in {where} is corrupt: its {size} bytes hash to {got}")


def _not_put(path: str, sha: str, got: str, size: int) -> BlobMismatch:
    return BlobMismatch(f"{path} was not stored: it was given as sha256 {sha}, but its {size} "
                        f"bytes hash to {got} (did it change after it was hashed?)")


def receive(src: BinaryIO, sha: str, dest: str, where: str) -> int:
    """Stream ``src`` to a unique temp beside ``dest``; replace ``dest`` only if it hashes to ``sha``."""
    tmp = os.path.join(os.path.dirname(dest) or ".", temp_name(".fetch"))
    try:
        with open(tmp, "xb") as out:
            got, size = copy_hashing(src, out)
        if got != sha:
            raise _mismatch(sha, got, size, where)
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return size


class LocalBlobStore:
    """Blobs in a local folder: ``<root>/ab/abcdef...``."""

    def __init__(self, url: str, **_: Any) -> None:
        self.root = os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)
        self.url = "file://" + self.root
        self._made = False  # the folder is made by the first write: reading makes nothing

    def _temp_path(self, name: str) -> str:
        if not self._made:
            os.makedirs(self.root, exist_ok=True)
            self._made = True
        return os.path.join(self.root, name)

    def path_for(self, sha: str) -> str:
        return os.path.join(self.root, _key(sha))

    def exists(self, sha: str) -> bool:
        return os.path.exists(self.path_for(sha))

    def store_stream(self, fileobj: BinaryIO, expect: str | None = None) -> tuple[str, int]:
        """Read ``fileobj`` once, hashing while writing a temp; rename it to its sha's key.
        With ``expect``, bytes that hash to anything else raise BlobMismatch, nothing stored."""
        return self._store(fileobj, expect)

    def _store(self, fileobj: BinaryIO, expect: str | None) -> tuple[str, int]:
        tmp = self._temp_path(temp_name())
        try:
            with open(tmp, "xb") as out:
                sha, size = copy_hashing(fileobj, out)
            if expect is not None and sha != expect:
                raise _not_put(getattr(fileobj, "name", "a file"), expect, sha, size)
            self._commit(tmp, sha, size)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return sha, size

    def _commit(self, tmp: str, sha: str, size: int) -> None:
        """Rename a verified temp to its key; an existing blob of the same size is kept."""
        dest = self.path_for(sha)
        try:
            if os.path.getsize(dest) == size:  # a truncated blob is replaced, not trusted
                os.unlink(tmp)
                return
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(tmp, dest)

    def put(self, local_path: str, sha: str, *, move: bool) -> None:
        """Store a local file under ``sha``; ``BlobMismatch`` (a ValueError) if it hashes otherwise.

        Kept for callers that hashed first; ``store_stream`` does it in one read.
        ``move``: the file is the caller's private copy and is gone afterwards.
        """
        dest = self.path_for(sha)
        if os.path.exists(dest):
            if move:
                os.unlink(local_path)
            return
        if move and self._move_in(local_path, sha):
            return
        with open(local_path, "rb") as f:
            self._store(f, sha)
        if move:
            os.unlink(local_path)

    def _move_in(self, local_path: str, sha: str) -> bool:
        """Rename (no copy) a private file into the store, hashing it there; False: copy instead."""
        st = os.lstat(local_path)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a shared inode can change later
            return False
        tmp = self._temp_path(temp_name())
        try:
            os.rename(local_path, tmp)
        except OSError:  # another filesystem
            return False
        try:
            got, size = sha256_of(tmp)
            if got != sha:
                raise _not_put(local_path, sha, got, size)
        except BaseException:
            os.replace(tmp, local_path)  # put failed: the caller's file is back as it was
            raise
        self._commit(tmp, sha, size)
        return True

    def fetch(self, sha: str, dest: str) -> None:
        """Copy the blob to ``dest``, verified: ``BlobMismatch`` names the sha if it is corrupt."""
        with open(self.path_for(sha), "rb") as src:
            receive(src, sha, dest, self.url)

    def url_for(self, sha: str) -> str:
        return "file://" + self.path_for(sha)

    def delete(self, sha: str) -> None:
        _unlink_quiet(self.path_for(sha))

    def writable(self) -> None:
        probe = self._temp_path(temp_name(".probe"))
        with open(probe, "xb"):
            pass
        os.unlink(probe)

    def sweep_incoming(self, older_than: float = 86400.0) -> int:
        """Remove temps that crashed writers left behind (older than ``older_than`` seconds)."""
        removed = 0
        cutoff = time.time() - older_than
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:  # never written to
            return 0
        with entries:
            for entry in entries:
                if entry.name.startswith((INCOMING, ".probe-")) and entry.is_file(
                        follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    _unlink_quiet(entry.path)
                    removed += 1
        return removed


def _seconds(name: str, default: float) -> float:
    from clearml_hooks import config

    return config.get(name)  # the one settings reader (default there: ``default``)


def fsspec_options(url: str) -> dict:
    """Storage options from the settings: S3-compatible endpoints, keys, bounded timeouts."""
    from clearml_hooks import config

    if url.startswith(("s3://", "s3a://")):
        endpoint = config.get("s3_endpoint_url") or os.environ.get(
            "AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, Any] = {"config_kwargs": {
            "connect_timeout": _seconds("s3_connect_timeout", DEFAULT_S3_CONNECT_TIMEOUT),
            "read_timeout": _seconds("s3_read_timeout", DEFAULT_S3_READ_TIMEOUT),
            "retries": {"max_attempts": S3_MAX_ATTEMPTS},
        }}
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        key = os.environ.get("CLEARML_HOOKS_S3_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("CLEARML_HOOKS_S3_SECRET") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            options.update(key=key, secret=secret)
        return options
    return {}


_s3_session: Any = None
_s3_session_lock = threading.Lock()


def _drop_expect_continue(params: dict | None = None, **_: Any) -> None:
    """aiohttp waits for a ``100 Continue`` with no timeout at all, so a frozen server would
    hang every upload forever; without the header the read timeout covers the whole call."""
    if params is not None:
        params.get("headers", {}).pop("Expect", None)


def s3_session() -> Any:
    """One aiobotocore session for our S3 clients, with the handler above (the user's own
    botocore sessions are left alone)."""
    global _s3_session
    with _s3_session_lock:
        if _s3_session is None:
            from aiobotocore.session import AioSession

            session = AioSession()
            session.register("before-call.s3", _drop_expect_continue)
            _s3_session = session
        return _s3_session


def open_fs(url: str, **storage_options: Any) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs`` with our options; every call is bounded by the timeouts above."""
    import fsspec

    s3 = url.startswith(("s3://", "s3a://"))
    options = {**fsspec_options(url), **storage_options}
    if s3:
        options.setdefault("session", s3_session())
    fs, path = fsspec.core.url_to_fs(url, **options)
    if s3 and hasattr(fs, "retries"):
        # s3fs retries timeouts 5 more times on top of botocore: a frozen server would hang
        # a call for minutes. botocore's own attempts (S3_MAX_ATTEMPTS) are the only retries.
        fs.retries = 1
    return fs, path


def _is_unreachable(exc: BaseException) -> bool:
    """A timeout or refused connection: cleanup calls would only wait as long again."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return any("Timeout" in c.__name__ or "EndpointConnection" in c.__name__
               for c in type(exc).__mro__)


def _abandon(out: Any, exc: BaseException) -> None:
    """Drop a half-written upload: abort it (multipart) and make sure it is never committed,
    not even by the file object's ``__del__``."""
    discard = getattr(out, "discard", None)
    if discard is not None and not _is_unreachable(exc):
        try:
            discard()
        except Exception:
            pass
    try:
        out.closed = True
    except AttributeError:  # a plain io object: close() has no remote side
        out.close()


class FsspecBlobStore:
    """Blobs under any fsspec URL prefix; uploads and downloads stream, never whole in memory."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = open_fs(self.url, **storage_options)
        self.root = self.root.rstrip("/")
        self.protocol = url.split("://", 1)[0]

    def _path(self, sha: str) -> str:
        return f"{self.root}/{_key(sha)}"

    def exists(self, sha: str) -> bool:
        return self.fs.exists(self._path(sha))

    def store_stream(self, fileobj: BinaryIO, expect: str | None = None) -> tuple[str, int]:
        """Upload ``fileobj`` once to a temp key while hashing; server-side copy it to its key.
        With ``expect``, bytes that hash to anything else raise BlobMismatch, nothing stored."""
        return self._store(fileobj, expect)

    def _store(self, fileobj: BinaryIO, expect: str | None) -> tuple[str, int]:
        tmp = f"{self.root}/{INCOMING}/{temp_name('up')}"
        try:
            out = self.fs.open(tmp, "wb")
            try:
                sha, size = copy_hashing(fileobj, out)
            except BaseException as exc:
                _abandon(out, exc)
                raise
            out.close()
            if expect is not None and sha != expect:
                raise _not_put(getattr(fileobj, "name", "a file"), expect, sha, size)
            final = self._path(sha)
            if not self._has(final, size):
                self.fs.copy(tmp, final)
        except BaseException as exc:
            if not _is_unreachable(exc):
                self._rm_quiet(tmp)
            raise
        self._rm_quiet(tmp)
        return sha, size

    def _has(self, path: str, size: int) -> bool:
        """The key exists with this size (a truncated object is overwritten, not trusted)."""
        self.fs.invalidate_cache(path)
        try:
            return int(self.fs.info(path).get("size", -1)) == size
        except FileNotFoundError:
            return False

    def _rm_quiet(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception:  # a leftover temp key is swept later, never read as a blob
            pass

    def put(self, local_path: str, sha: str, *, move: bool) -> None:
        """Upload a local file under ``sha``; ``BlobMismatch`` (a ValueError) if it hashes otherwise."""
        if not self.exists(sha):
            with open(local_path, "rb") as f:
                self._store(f, sha)
        if move:
            os.unlink(local_path)

    def fetch(self, sha: str, dest: str) -> None:
        """Download to ``dest``, verified: ``BlobMismatch`` names the sha if it is corrupt."""
        with self.fs.open(self._path(sha), "rb") as src:
            receive(src, sha, dest, self.url)

    def url_for(self, sha: str) -> str:
        return f"{self.protocol}://{self._path(sha)}"

    def delete(self, sha: str) -> None:
        try:
            self.fs.rm_file(self._path(sha))
        except FileNotFoundError:
            pass

    def writable(self) -> None:
        probe = f"{self.root}/{temp_name('.probe')}"
        self.fs.pipe_file(probe, b"")
        self.fs.rm_file(probe)

    def sweep_incoming(self, older_than: float = 86400.0) -> int:
        """Remove temp keys that crashed or cut-off uploads left behind."""
        folder = f"{self.root}/{INCOMING}"
        try:
            entries = self.fs.ls(folder, detail=True, refresh=True)
        except FileNotFoundError:
            return 0
        cutoff = time.time() - older_than
        removed = 0
        for entry in entries:
            modified = entry.get("LastModified") or entry.get("mtime") or entry.get("created")
            when = modified.timestamp() if hasattr(modified, "timestamp") else modified
            if entry.get("type") == "file" and isinstance(when, (int, float)) and when < cutoff:
                self._rm_quiet(entry["name"])
                removed += 1
        return removed


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
