"""Weights registered by a remote URL (http(s)://, s3://, ...): downloaded once into the model
cache through fsspec, with a progress bar, then re-verified locally on every later use.

Registering a URL never touches it (as in ClearML); the first ``get_local_copy`` downloads it.
The download is hashed and recorded in a sidecar (``CacheRecord``), so a later use trusts the
cached copy while it is unchanged (size, mtime, ctime, inode), re-hashes it if it changed, and
downloads again only if its bytes differ: no request at all on a cache hit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from fsspec.callbacks import Callback

log = logging.getLogger("clearml_hooks")

HTTP_CONNECT_TIMEOUT = 15.0  # seconds to open a connection to the server
HTTP_READ_TIMEOUT = 120.0  # seconds without a byte from the server mid-download
HTTP_MIN_RATE = 1024  # bytes per second: a download slower than this ...
HTTP_STALL_SECONDS = 60.0  # ... for this long is cut off (curl's --speed-limit / --speed-time)
HTTP_SCHEMES = ("http", "https")


def is_http(uri: str) -> bool:
    return uri.split("://", 1)[0].lower() in HTTP_SCHEMES


def cached_download(cache_dir: str, uri: str, force: bool) -> str:
    """A verified local copy of the remote file (or folder) at ``uri`` in ``cache_dir``."""
    from clearml_hooks.store.cache_records import CacheRecord
    from clearml_hooks.store.safe_paths import safe_name

    # the file name is the URL path's last part: no query, no fragment, %-escapes decoded
    name = _fit(safe_name(unquote(urlsplit(uri).path)))
    folder = os.path.join(cache_dir, "remote", hashlib.sha256(uri.encode()).hexdigest()[:32])
    target = os.path.join(folder, name)
    record = CacheRecord(folder + ".verified")
    # a folder is only ever a download of a remote folder (never over http), and is ours only
    # if it is not a symlink to somewhere else
    cached_folder = not is_http(uri) and os.path.isdir(target) and not os.path.islink(target)
    if not force and (cached_folder or _still_verified(record, name, uri, target)):
        return target
    from clearml_hooks.store.blobs import sha256_of
    from clearml_hooks.store.cache_records import stamp

    fs, remote = _remote_fs(uri)
    os.makedirs(folder, exist_ok=True)
    _remove_dead_downloads(folder)
    tmp = os.path.join(folder, _temp_name())
    sha: str | None = None
    size = 0
    inode = None
    try:
        if not is_http(uri) and _explained(uri, fs.isdir, remote):  # http has no folders
            _explained(uri, fs.get, remote.rstrip("/") + "/", tmp, recursive=True)
        else:
            _download_file(fs, remote, tmp, uri)
            sha, size = sha256_of(tmp)
            inode = os.lstat(tmp).st_ino
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.unlink(target)
        os.replace(tmp, target)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.unlink(tmp)
    now = stamp(target)
    if sha is None:
        record.forget(name)  # a folder
    elif now is not None and now[3] == inode:
        record.set(name, {"url": uri, "sha256": sha, "size": size, "stamp": now})
    # else another process replaced the file meanwhile: its record stands (or, if it has none
    # yet, the next use re-verifies the file)
    record.save()
    return target


def _fit(name: str, limit: int = 255) -> str:
    """``name`` within the filesystem's limit on a name's bytes: a long stem is shortened, the
    extension kept (a URL's path can be longer than any file name)."""
    if len(os.fsencode(name)) <= limit:
        return name
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > limit // 2:
        stem, ext = name, ""
    while stem and len(os.fsencode(stem + ext)) > limit:
        stem = stem[:-1]
    return stem + ext


_TEMP = ".fetch"  # downloads in progress: <_TEMP>-<pid>-<uuid>.<host> next to their target
_STALE = 3600.0  # seconds without a write after which any host's download is dead


def _host() -> str:
    """This machine, in temporary names: a pid says whether a download is alive only on the
    machine that started it (a cache on a shared home folder is seen by many)."""
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_name() -> str:
    import uuid

    return f"{_TEMP}-{os.getpid()}-{uuid.uuid4().hex}.{_host()}"


def _remove_dead_downloads(folder: str) -> None:
    """Remove what downloads of processes that died (kill -9, power loss) left in ``folder``:
    this machine's whose process is gone, and anyone's untouched for an hour."""
    import time

    try:
        names = os.listdir(folder)
    except OSError:
        return
    host = _host()
    for entry in names:
        parts = entry.split("-", 2)
        if len(parts) != 3 or parts[0] != _TEMP or not parts[1].isdigit():
            continue
        path = os.path.join(folder, entry)
        here = parts[2].rsplit(".", 1)[-1] == host
        if here and _alive(int(parts[1])):
            continue
        if not here:
            try:
                if time.time() - os.lstat(path).st_mtime < _STALE:
                    continue
            except OSError:
                continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours to signal
    return True


def _still_verified(record: Any, key: str, uri: str, target: str) -> bool:
    """The cached copy is the one downloaded from ``uri``: unchanged since, or re-hashed now."""
    from clearml_hooks.store.blobs import sha256_of
    from clearml_hooks.store.cache_records import stamp

    entry = record.get(key)
    if not isinstance(entry, dict) or entry.get("url") != uri or not entry.get("sha256"):
        return False
    if record.trusted(key, entry["sha256"], target):
        return True
    before = stamp(target)
    if before is None or before[0] != entry.get("size"):
        return False
    got, _ = sha256_of(target)
    if got != entry["sha256"] or stamp(target) != before:
        return False
    record.set(key, {**entry, "stamp": before})
    record.save()
    return True


def _remote_fs(uri: str) -> tuple[Any, str]:
    """An fsspec filesystem for ``uri``, every call bounded by timeouts."""
    if not is_http(uri):
        from clearml_hooks.store.blobs import open_fs

        return _explained(uri, open_fs, uri)
    try:
        import aiohttp
    except ImportError:
        raise ValueError(f"downloading {_redact(uri, uri)} needs aiohttp, which is not installed: "
                         "pip install 'clearml-hooks[http]'") from None
    import fsspec

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_CONNECT_TIMEOUT,
                                    sock_read=HTTP_READ_TIMEOUT)
    return fsspec.filesystem("http", client_kwargs={"timeout": timeout}), uri


def _download_file(fs: Any, remote: str, tmp: str, uri: str) -> None:
    """One streamed GET (or the store's read) into ``tmp``, with a progress bar on a terminal."""
    log.info("clearml-hooks: downloading %s", _redact(uri, uri))
    label = os.path.basename(urlsplit(uri).path) or _redact(uri, uri)
    with DownloadProgress(label, min_rate=HTTP_MIN_RATE if is_http(uri) else None,
                          window=HTTP_STALL_SECONDS) as progress:
        _explained(uri, fs.get_file, remote, tmp, callback=progress)


def _explained(uri: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args)``; a failure becomes a ``ValueError`` saying what was wrong and what to do."""
    try:
        return call(*args, **kwargs)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(_redact(uri, _explain(uri, exc))) from exc


def _redact(uri: str, text: str) -> str:
    """``text`` without the password of ``uri`` (``https://user:password@host/...``), so errors
    and logs never show it."""
    try:
        password = urlsplit(uri).password
    except ValueError:
        return text
    return text.replace(f":{password}@", ":***@") if password else text


_LOCAL_WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES,
                       errno.EPERM}


def _explain(uri: str, exc: BaseException) -> str:
    host = urlsplit(uri).hostname or uri
    again = ("; fix the URL, or register the weights again at a reachable one "
             "(update_weights(register_uri=...) or InputModel.import_model)")
    status = getattr(exc, "status", None)
    if type(exc).__name__ == "TooManyRedirects":
        return (f"{host} redirected the download of {uri} too many times (a redirect loop?)"
                + again)
    if isinstance(exc, Stalled):
        return (f"{host} sent the download of {uri} too slowly ({exc}): the server is stuck or "
                "overloaded; try again later" + again)
    if isinstance(exc, TimeoutError):
        limits = (f" (no byte for {HTTP_READ_TIMEOUT:g} s, or no connection in "
                  f"{HTTP_CONNECT_TIMEOUT:g} s)" if is_http(uri) else "")
        return (f"{host} did not answer the download of {uri} in time{limits}: the server is "
                "stuck or overloaded; try again later" + again)
    if isinstance(exc, FileNotFoundError) or status == 404:
        return f"the model's weights are not at {uri} (not found{', HTTP 404' if is_http(uri) else ''})" + again
    if isinstance(status, int):
        reason = getattr(exc, "message", "") or ""
        hint = (" (check access: credentials, or a signed URL that expired)"
                if status in (401, 403) else "")
        return f"{host} refused the download of {uri}: HTTP {status} {reason}".rstrip() + hint + again
    if (isinstance(exc, OSError) and exc.errno in _LOCAL_WRITE_ERRORS
            and not type(exc).__module__.startswith("aiohttp")):
        # the server answered; this machine could not keep the bytes (disk full, file size
        # limit, quota, read-only or unwritable cache)
        return (f"could not save the download of {uri} into the model cache: "
                f"{type(exc).__name__}: {exc}; free disk space or make the cache folder "
                "writable (the store's home, CLEARML_HOOKS_HOME), then try again")
    if isinstance(exc, (TimeoutError, ConnectionError, OSError)) or "Connect" in type(exc).__name__:
        return (f"cannot reach {host} to download {uri}: {type(exc).__name__}: {exc}; check the "
                "URL and that this machine can reach the server (network, proxy, VPN, firewall)")
    return f"could not download {uri}: {type(exc).__name__}: {exc}"


class Stalled(Exception):
    """A download kept trickling in below the minimum rate (a read timeout never fires).
    Not a TimeoutError: fsspec turns those into its own, losing the reason."""


class DownloadProgress(Callback):
    """An fsspec callback drawing a rich progress bar on stderr (nothing when not a terminal).

    With ``min_rate``, it also cuts off a download that receives fewer than ``min_rate`` bytes
    per second over ``window`` seconds: a server dripping a byte now and then never trips the
    read timeout, and would hold the caller forever.
    """

    def __init__(self, label: str, *, min_rate: float | None = None,
                 window: float = HTTP_STALL_SECONDS) -> None:
        super().__init__()
        self._min_rate, self._window = min_rate, window
        self._mark = (time.monotonic(), 0)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                             transient=True, disable=not console.is_terminal)
        self._task = self._bar.add_task(f"downloading {label}", total=None)

    def __enter__(self) -> DownloadProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.stop()

    def call(self, *args: Any, **kwargs: Any) -> None:
        self._bar.update(self._task, total=self.size, completed=self.value)
        if self._min_rate is None:
            return
        now = time.monotonic()
        since, at = self._mark
        if now - since >= self._window:
            if self.value - at < self._min_rate * (now - since):
                raise Stalled(f"{self.value - at} bytes in {now - since:.0f} s, under "
                              f"{self._min_rate:g} bytes/s for {self._window:g} s")
            self._mark = (now, self.value)
