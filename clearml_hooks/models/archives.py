"""Package archives: a package that is a zip or tar is extracted into the cache, a package folder
is handed out as a zip (as ClearML does), each reused only while nothing in it changed."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zipfile
from collections.abc import Sequence

from clearml_hooks.store import Store


def package_view(store: Store, path: str, is_package: bool, extract: bool | None,
                  force: bool) -> str:
    """A package that is an archive file is extracted unless ``extract_archive=False``."""
    if not is_package or extract is False or os.path.isdir(path):
        if is_package and extract is False and os.path.isdir(path):
            return zip_folder(path, force, dest=zip_dest(store, path))
        return path
    if not (zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
        return path
    from clearml_hooks.store.blobs import temp_name
    from clearml_hooks.store.cache_records import CacheRecord, tree_stamps

    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    dest = os.path.join(store.cache_dir, "extracted", key[:32])
    record = CacheRecord(dest + ".verified")
    # an extracted tree is reused only while no file in it was changed, added or removed
    if os.path.isdir(dest) and not force and record.get("tree") == tree_stamps(dest):
        return dest
    tmp = os.path.join(os.path.dirname(dest), temp_name(".extract"))
    os.makedirs(tmp)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)  # zipfile drops absolute paths and ".." components
        else:
            with tarfile.open(path) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, filter="data")
                else:  # pragma: no cover - old Pythons: refuse unsafe members ourselves
                    for member in tf.getmembers():
                        target = os.path.realpath(os.path.join(tmp, member.name))
                        if not target.startswith(os.path.realpath(tmp) + os.sep) or \
                                member.issym() or member.islnk():
                            raise ValueError(f"unsafe member {member.name!r} in {path}")
                    tf.extractall(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record.set("tree", tree_stamps(dest))
    record.save()
    return dest


def zip_dest(store: Store, folder: str) -> str:
    """Where the zip of a folder outside the cache goes: the cache, never beside the user's files."""
    name = os.path.basename(os.path.abspath(folder)) or "model"
    key = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:32]
    return os.path.join(store.cache_dir, "zipped", key, name + ".zip")


def zip_folder(folder: str, force: bool, *, names: Sequence[str] | None = None,
                dest: str | None = None) -> str:
    """A zip of a package folder (ClearML hands packages out as zip files).

    ``names``: the files to pack (a snapshot's verified files; default every file). A zip made
    earlier is reused only while it and every input are unchanged since it was made.
    """
    from clearml_hooks.store.blobs import temp_name
    from clearml_hooks.store.cache_records import CacheRecord, stamp

    target = dest or folder.rstrip(os.sep) + ".zip"
    if names is None:
        names = sorted(os.path.relpath(os.path.join(base, n), folder)
                       for base, _dirs, files in os.walk(folder) for n in files)
    inputs = {rel: stamp(os.path.join(folder, rel)) for rel in names}
    record = CacheRecord(target + ".verified")
    made = record.get("zip")
    if not force and made == {"stamp": stamp(target), "inputs": inputs}:
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = os.path.join(os.path.dirname(target), temp_name(".zip"))
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for rel in sorted(names):
                zf.write(os.path.join(folder, rel), rel)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    record.set("zip", {"stamp": stamp(target), "inputs": inputs})
    record.save()
    return target

