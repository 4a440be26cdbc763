"""ClearML's ``StorageManager``: get, upload and download files by URL, through fsspec.

Training scripts written for ClearML fetch their inputs with ``StorageManager.get_local_copy``
and push outputs with ``upload_file``; these work the same here for local paths, ``file://``,
``http(s)://`` (fsspec's HTTP filesystem) and every fsspec URL the environment can open
(``s3://`` with s3fs, ...). Downloads are cached under ``<home>/cache/storage``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil

log = logging.getLogger("clearml_hooks")

_ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url[len("file://"):]
    if "://" not in url:
        return os.path.expanduser(url)
    return None


def _cache_root(cache_context: str | None) -> str:
    from clearml_hooks.config import Settings
    from clearml_hooks.store import writable_cache_dir

    root = writable_cache_dir(Settings.resolve().home, "storage")
    return os.path.join(root, cache_context) if cache_context else root


def _extract(path: str) -> str:
    """An archive unpacked next to itself (once); zip drops ``..`` and absolute names, tar
    extracts with the ``data`` filter."""
    import tarfile
    import zipfile

    target = path + "_extracted"
    if os.path.isdir(target):
        return target
    tmp = f"{target}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            zf.extractall(tmp)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            tf.extractall(tmp, filter="data")
    else:
        return path
    os.replace(tmp, target)
    return target


class StorageManager:
    """ClearML's storage helper (class methods only)."""

    @classmethod
    def get_local_copy(cls, remote_url: str, cache_context: str | None = None,
                       extract_archive: bool = True, name: str | None = None,
                       force_download: bool = False) -> str | None:
        """A local path with the contents of ``remote_url``: a local path (or ``file://``) as
        it is, a remote file downloaded into the cache (again only with ``force_download``).
        A downloaded archive is extracted (``extract_archive``) and its folder returned.
        None when it cannot be had (with a warning), as in ClearML."""
        remote_url = os.fspath(remote_url)
        local = _local_path(remote_url)
        if local is not None:
            return local if os.path.exists(local) else None
        from clearml_hooks.store.blobs import open_fs, temp_name
        from clearml_hooks.store.safe_paths import safe_name

        clean = remote_url.split("?", 1)[0].rstrip("/")
        folder = os.path.join(_cache_root(cache_context),
                              hashlib.sha256(remote_url.encode()).hexdigest()[:32])
        target = os.path.join(folder, safe_name(name or clean.rsplit("/", 1)[-1] or "download"))
        try:
            if force_download or not os.path.exists(target):
                os.makedirs(folder, exist_ok=True)
                fs, path = open_fs(remote_url)
                tmp = os.path.join(folder, temp_name(".fetch"))
                try:
                    from clearml_hooks.models import downloads

                    with downloads.DownloadProgress(
                            clean.rsplit("/", 1)[-1], window=downloads.HTTP_STALL_SECONDS,
                            min_rate=downloads.HTTP_MIN_RATE if downloads.is_http(remote_url)
                            else None) as progress:
                        fs.get_file(path, tmp, callback=progress)
                    os.replace(tmp, target)
                finally:
                    if os.path.lexists(tmp):
                        os.unlink(tmp)
        except Exception as exc:
            log.warning("clearml-hooks: could not get a local copy of %s: %s", remote_url, exc)
            return None
        if extract_archive and target.lower().endswith(_ARCHIVES):
            return _extract(target)
        return target

    @classmethod
    def upload_file(cls, local_file: str, remote_url: str, wait_for_upload: bool = True,
                    retries: int | None = None) -> str:
        """Copy ``local_file`` to ``remote_url`` (a local path, ``file://`` or any fsspec URL);
        returns ``remote_url``. A URL ending in ``/`` gets the file's name appended."""
        local_file, remote_url = os.fspath(local_file), os.fspath(remote_url)
        if not os.path.isfile(local_file):
            raise ValueError(f"upload_file: no file at {local_file}")
        if remote_url.endswith("/"):
            remote_url += os.path.basename(local_file)
        local = _local_path(remote_url)
        if local is not None:
            os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
            shutil.copyfile(local_file, local)
            return remote_url
        from clearml_hooks.store.blobs import open_fs

        fs, path = open_fs(remote_url)
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(local_file, path)
        return remote_url

    @classmethod
    def download_folder(cls, remote_url: str, local_folder: str | None = None,
                        match_wildcard: str | None = None, overwrite: bool = False,
                        skip_zero_size_check: bool = False, silence_errors: bool = False,
                        max_workers: int | None = None) -> str | None:
        """Copy every file under ``remote_url`` into ``local_folder`` (default: the cache),
        keeping the relative paths; files already there are kept unless ``overwrite``.
        Returns the local folder (None on failure with ``silence_errors``)."""
        import fnmatch

        from clearml_hooks.store.blobs import open_fs

        remote_url = os.fspath(remote_url)
        if local_folder is None:
            local_folder = os.path.join(_cache_root(None), "folders",
                                        hashlib.sha256(remote_url.encode()).hexdigest()[:32])
        local_folder = os.path.abspath(os.fspath(local_folder))
        try:
            local = _local_path(remote_url)
            fs, root = open_fs(os.path.abspath(local) if local is not None else remote_url)
            root = root.rstrip("/")
            for path in fs.find(root):
                rel = path[len(root):].lstrip("/")
                if not rel or ".." in rel.split("/"):
                    continue
                if match_wildcard and not fnmatch.fnmatch(rel, match_wildcard):
                    continue
                dest = os.path.join(local_folder, *rel.split("/"))
                if os.path.exists(dest) and not overwrite:
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                fs.get_file(path, dest)
        except Exception as exc:
            if not silence_errors:
                raise
            log.warning("clearml-hooks: could not download %s: %s", remote_url, exc)
            return None
        return local_folder
