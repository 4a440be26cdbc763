"""Model objects: thin views over the catalog with ClearML's ``Model`` / ``InputModel`` /
``OutputModel`` API, so code written against the ClearML model docs runs unchanged.

Reads go to the catalog each time (values are never stale across processes); every write is one
transaction in ``store/model_ops.py``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clearml_hooks import context
from clearml_hooks.frameworks import canonical_framework
from clearml_hooks.model_reporting import ModelReporting
from clearml_hooks.store import Store, open_store

if TYPE_CHECKING:
    from clearml_hooks.task import Task


def default_store() -> Store:
    """The current task's store, else the one the environment and config file name."""
    task = context.current_task()
    return task.store if task is not None else open_store()

log = logging.getLogger("clearml_hooks")

# file extension -> framework, for weights registered without a framework (as ClearML guesses)
_EXT_FRAMEWORK = {
    ".pt": "PyTorch", ".pth": "PyTorch", ".h5": "Keras", ".hdf5": "Keras", ".keras": "Keras",
    ".pb": "TensorFlow", ".tflite": "TensorFlow", ".cbm": "CatBoost", ".onnx": "Onnx",
    ".pkl": "ScikitLearn", ".joblib": "ScikitLearn", ".mge": "MegEngine",
}
_BLOB_URL = re.compile(r"^(?P<root>.+)/(?P<prefix>[0-9a-f]{2})/(?P<sha>[0-9a-f]{64})(\?manifest)?$")


def _guess_framework(filename: str | None) -> str | None:
    if not filename:
        return None
    name = filename.lower().rstrip("/")
    for ext, fw in _EXT_FRAMEWORK.items():
        if name.endswith(ext):
            return fw
    return None


def _validate_labels(labels: Any) -> dict[str, int]:
    """Label enumeration as ``{str: int}``; anything else is a ``ValueError`` (bools too)."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"label enumeration must be a dict of label -> int, got {type(labels).__name__}")
    out = {}
    for key, value in labels.items():
        if not isinstance(key, str):
            raise ValueError(f"label enumeration keys must be strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"label enumeration values must be integers: {key!r} -> {value!r}")
        out[key] = int(value)
    return out


def _resolve_config(config_text: str | None, config_dict: Mapping | None) -> tuple[str | None, str | None]:
    """(config_text, config_dict JSON). Exactly as ClearML: one of the two, never both."""
    if config_text is not None and config_dict is not None:
        raise ValueError("specify config_text or config_dict, not both")
    if config_dict is not None:
        if not isinstance(config_dict, Mapping):
            raise ValueError("config_dict must be a dict")
        try:
            as_json = json.dumps(dict(config_dict), default=str)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config_dict cannot be stored: {exc}") from exc
        return json.dumps(dict(config_dict), indent=2, default=str), as_json
    if config_text is not None and not isinstance(config_text, str):
        raise ValueError("config_text must be a string")
    return config_text, None


def _parse_config_text(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else {"value": value}
    except ValueError:
        pass
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text)
    except Exception:
        return {}


class Model(ModelReporting):
    """A registered model, by id. ``ValueError`` (``UnknownModel``) if the id is not in the store."""

    def __init__(self, model_id: str, *, store: Store | None = None) -> None:
        self._store = store or default_store()
        self._id = str(model_id) if model_id is not None else model_id
        self._link_name: str | None = None
        self._row()  # raises UnknownModel naming the id

    @classmethod
    def _from_row(cls, store: Store, row: dict) -> Model:
        """A Model for a row already read (queries: no second round trip per model)."""
        model = Model.__new__(Model)
        model._store = store
        model._id = row["id"]
        model._link_name = None
        return model

    def _row(self) -> dict:
        from clearml_hooks.store import model_ops

        try:
            return model_ops.get_row(self._store.catalog, self._id)
        except model_ops.UnknownModel:
            raise model_ops.UnknownModel(self._id, f"the store at {self._store.home}") from None

    @property
    def _catalog(self):
        return self._store.catalog

    # -- properties ---------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def name(self) -> str:
        return self._row()["name"]

    @name.setter
    def name(self, value: str) -> None:
        from clearml_hooks.store import model_ops

        if not value or not isinstance(value, str):
            raise ValueError("a model name must be a non-empty string")
        model_ops.update_fields(self._catalog, self._id, name=value)

    @property
    def project(self) -> str | None:
        """The project's name (ClearML returns its id; names are what query_models takes)."""
        return self._row()["project"]

    @project.setter
    def project(self, value: str) -> None:
        from clearml_hooks.store import model_ops

        model_ops.set_project(self._catalog, self._id, value)

    @property
    def project_id(self) -> str | None:
        return self._row()["project_id"]

    @property
    def framework(self) -> str | None:
        return self._row()["framework"]

    @property
    def url(self) -> str | None:
        """Where the weights are: the blob URL of stored weights, or the registered URL."""
        return self._row()["uri"]

    @property
    def comment(self) -> str:
        return self._row()["comment"]

    @comment.setter
    def comment(self, value: str) -> None:
        from clearml_hooks.store import model_ops

        model_ops.update_fields(self._catalog, self._id, comment=str(value or ""))

    @property
    def tags(self) -> list[str]:
        return json.loads(self._row()["tags"])

    @tags.setter
    def tags(self, value: Sequence[str]) -> None:
        from clearml_hooks.store import model_ops

        model_ops.set_tags(self._catalog, self._id, value)

    def add_tags(self, tags: Sequence[str] | str) -> list[str]:
        from clearml_hooks.store import model_ops

        return model_ops.edit_tags(self._catalog, self._id, add=[tags] if isinstance(tags, str) else tags)

    def remove_tags(self, tags: Sequence[str] | str) -> list[str]:
        from clearml_hooks.store import model_ops

        return model_ops.edit_tags(self._catalog, self._id,
                                   remove=[tags] if isinstance(tags, str) else tags)

    @property
    def system_tags(self) -> list[str]:
        return json.loads(self._row()["system_tags"])

    @property
    def labels(self) -> dict[str, int]:
        return json.loads(self._row()["labels"])

    @property
    def config_text(self) -> str | None:
        return self._row()["config_text"]

    @property
    def config_dict(self) -> dict:
        row = self._row()
        if row["config_dict"]:
            return json.loads(row["config_dict"])
        return _parse_config_text(row["config_text"])

    @property
    def task(self) -> str | None:
        """The id of the task that created the model."""
        return self._row()["task_id"]

    @property
    def parent(self) -> str | None:
        """The id of the model this one was trained from (the task's input model)."""
        return self._row()["parent_id"]

    @property
    def published(self) -> bool:
        return bool(self._row()["published"])

    @property
    def archived(self) -> bool:
        return bool(self._row()["archived"])

    @property
    def is_package(self) -> bool:
        return bool(self._row()["is_package"])

    @property
    def iteration(self) -> int | None:
        return self._row()["iteration"]

    @property
    def ready(self) -> bool:
        """True once weights are stored (or registered by URL)."""
        return bool(self._row()["ready"])

    @property
    def created(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self._row()["created"], tz=_dt.timezone.utc)

    @property
    def updated(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self._row()["updated"], tz=_dt.timezone.utc)

    last_update = updated

    @property
    def source(self) -> str | None:
        """The path the training code saved this model to (auto-captured models)."""
        return self._row()["source"]

    @property
    def snapshots(self) -> list[dict]:
        """Every stored version of this model, oldest first (version, iteration, state, digest)."""
        return self._catalog.snapshots_of(self._id)

    # -- state ----------------------------------------------------------------------------------

    def publish(self) -> None:
        """Publish the model; publishing a published model is a no-op."""
        from clearml_hooks.store import model_ops

        model_ops.publish(self._catalog, self._id)

    def archive(self) -> None:
        """Hide the model from queries (``include_archived=True`` shows it again)."""
        from clearml_hooks.store import model_ops

        model_ops.set_archived(self._catalog, self._id, True)

    def unarchive(self) -> None:
        from clearml_hooks.store import model_ops

        model_ops.set_archived(self._catalog, self._id, False)

    # -- metadata -------------------------------------------------------------------------------

    def set_metadata(self, key: str, value: Any, v_type: Any = None) -> bool:
        """One typed entry. ``v_type`` is a name (``"int"``) or a type (``int``); by default the
        value's own type, so ``get_metadata_casted`` gives the value back."""
        from clearml_hooks.store import model_ops

        model_ops.set_metadata(self._catalog, self._id, {str(key): (
            model_ops.metadata_text(value), model_ops.metadata_type(value, v_type))}, replace=False)
        return True

    def get_metadata(self, key: str) -> str | None:
        """The entry's value as stored (a string), or None."""
        entry = self.get_all_metadata().get(str(key))
        return entry["value"] if entry else None

    def get_metadata_casted(self, key: str) -> Any:
        """The entry's value cast to its type when possible, else the string; None if missing."""
        from clearml_hooks.store import model_ops

        entry = self.get_all_metadata().get(str(key))
        return model_ops.cast_metadata(entry["value"], entry["type"]) if entry else None

    def get_all_metadata(self) -> dict[str, dict[str, str]]:
        """``{key: {"key": key, "value": str, "type": str}}``."""
        from clearml_hooks.store import model_ops

        return model_ops.get_metadata(self._catalog, self._id)

    def get_all_metadata_casted(self) -> dict[str, dict[str, Any]]:
        """As ``get_all_metadata`` with each value cast to its type (the docs' shape)."""
        from clearml_hooks.store import model_ops

        return {k: {**e, "value": model_ops.cast_metadata(e["value"], e["type"])}
                for k, e in self.get_all_metadata().items()}

    def set_all_metadata(self, metadata: Mapping[str, Any], replace: bool = True) -> bool:
        """``{key: {"value": v, "type": t}}`` (or plain ``{key: value}``); ``replace`` drops the
        keys not given."""
        from clearml_hooks.store import model_ops

        if not isinstance(metadata, Mapping):
            raise ValueError("metadata must be a dict of key -> {'value': ..., 'type': ...}")
        entries = {}
        for key, entry in metadata.items():
            if isinstance(entry, Mapping) and "value" in entry:
                value, v_type = entry["value"], entry.get("type")
            else:
                value, v_type = entry, None
            entries[str(key)] = (model_ops.metadata_text(value),
                                 model_ops.metadata_type(value, v_type))
        model_ops.set_metadata(self._catalog, self._id, entries, replace=replace)
        return True

    # -- bytes --------------------------------------------------------------------------------

    def get_local_copy(self, extract_archive: bool | None = None, raise_on_error: bool = False,
                       force_download: bool = False, version: int | None = None) -> str | None:
        """A local path with the model's bytes under their original file name(s).

        A package is a folder by default (``extract_archive=False``: a zip of it). ``version``
        picks an older snapshot. On failure: None, or ``ValueError`` with ``raise_on_error``.
        """
        try:
            return self._local_copy(force_download, version, extract_archive)
        except Exception as exc:
            if raise_on_error:
                if isinstance(exc, ValueError):
                    raise
                raise ValueError(f"could not get model {self._id}: {exc}") from exc
            log.warning("clearml-hooks: could not get a local copy of model %s: %s", self._id, exc)
            return None

    def get_weights(self, raise_on_error: bool = False, force_download: bool = False) -> str | None:
        """The weights as stored (a package is not extracted)."""
        return self.get_local_copy(extract_archive=False, raise_on_error=raise_on_error,
                                   force_download=force_download)

    def get_weights_package(self, return_path: bool = False, raise_on_error: bool = False):
        """A package's folder (``return_path``) or the list of its files."""
        if not self.is_package:
            raise ValueError(f"model {self._id} is not a package")
        folder = self.get_local_copy(extract_archive=True, raise_on_error=raise_on_error)
        if folder is None or return_path:
            return folder
        from pathlib import Path

        return sorted(Path(folder).glob("*"))

    def _local_copy(self, force: bool, version: int | None, extract: bool | None) -> str:
        row = self._row()
        snap_id = row["latest_snapshot_id"]
        if version is not None:
            matches = [s for s in self.snapshots if s["version"] == version]
            if not matches:
                raise ValueError(f"model {self._id} has no version {version}")
            snap_id = matches[0]["id"]
        if snap_id is None:
            if row["uri"]:
                path = _fetch_url(self._store, row["uri"], force)
                return _package_view(self._store, path, row["is_package"], extract, force)
            pending = [s for s in self.snapshots if s["state"] == "pending"]
            raise ValueError(f"model {self._id} has no stored weights yet"
                             + (" (an upload is still pending)" if pending else ""))
        snap = self._catalog.snapshot(snap_id)
        if snap is None or snap["state"] != "ready":
            raise ValueError(f"model {self._id}'s snapshot is not stored yet (state "
                             f"{snap and snap['state']})")
        blobs = self._store.blobs
        if row["origin"] == "imported" and not all(
                f["sha256"] and blobs.exists(f["sha256"]) for f in snap["files"]):
            path = _fetch_url(self._store, row["uri"] or "", force)
            return _package_view(self._store, path, row["is_package"], extract, force)
        uri = row["uri"] if row["latest_snapshot_id"] == snap_id else None
        return self._cached_snapshot(snap, row, uri, force, extract)

    def _cached_snapshot(self, snap: dict, row: dict, uri: str | None, force: bool,
                         extract: bool | None) -> str:
        """The snapshot's files in the cache, each verified against its sha256.

        Every catalog field that names a file is checked first (a tampered row cannot steer a
        write outside the cache); a cached copy is re-hashed unless it is unchanged since it
        was last verified.
        """
        from clearml_hooks.store.cache_records import CacheRecord
        from clearml_hooks.store.safe_paths import check_sha256, join_inside, safe_name
        from clearml_hooks.store.safe_paths import safe_relpath as clean

        mid = self._id
        what = f"model {mid} version {snap['version']}"
        digest = check_sha256(snap["digest"], model=mid, what="digest")
        files = [(clean(f["relpath"], model=mid), check_sha256(f["sha256"], model=mid),
                  int(f["size"])) for f in snap["files"]]
        if not files:
            raise ValueError(f"{what} has no files in the catalog")
        base = safe_name(snap["source_path"] or row["name"])
        folder = join_inside(self._store.cache_dir, digest, model=mid)
        record = CacheRecord(folder + ".verified")
        try:
            if snap["kind"] == "file":
                rel, sha, size = files[0]
                name = os.path.basename(rel)
                target = join_inside(folder, name, model=mid)
                _materialize(self._store, uri, sha, size, target, force, record, name, what)
                return _package_view(self._store, target, row["is_package"], extract, force)
            root = join_inside(folder, base, model=mid)
            for rel, sha, size in files:
                _materialize(self._store, uri, sha, size, join_inside(root, rel, model=mid),
                             force, record, os.path.join(base, rel), what)
            if snap["kind"] == "files":
                return os.path.join(root, base)  # the checkpoint prefix
            if extract is False:
                return _zip_folder(root, force, names=[rel for rel, _, _ in files])
            return root
        finally:
            record.save()

    # -- query, remove ----------------------------------------------------------------------------

    @classmethod
    def query_models(cls, project_name: str | None = None, model_name: str | None = None,
                     tags: Sequence[str] | None = None, only_published: bool = False,
                     include_archived: bool = False, max_results: int | None = None,
                     metadata: Mapping[str, Any] | None = None, *, framework: str | None = None,
                     order_by: str = "-updated", offset: int = 0,
                     store: Store | None = None) -> list[Model]:
        """Models that match every given filter, most recently updated first.

        ``tags``: ClearML's tag filter (OR by default, ``-tag`` excludes, ``__$and``/``__$all``,
        ``__$or``/``__$any``, ``__$not``). ``metadata``: exact match on every key. ``order_by``
        (``updated``, ``created``, ``name``, ``iteration``; ``-`` for descending) and ``offset``
        page through large results.
        """
        from clearml_hooks.store import model_ops

        store = store or default_store()
        rows = model_ops.query(
            store.catalog, project_name=project_name, model_name=model_name, tags=tags,
            only_published=only_published, include_archived=include_archived,
            max_results=max_results, metadata=metadata,
            framework=canonical_framework(framework) if framework else None,
            order_by=order_by, offset=offset, ids_only=True)
        return [Model._from_row(store, r) for r in rows]

    @classmethod
    def remove(cls, model: str | Model, delete_weights_file: bool = True, force: bool = False,
               raise_on_errors: bool = False) -> bool:
        """Delete a model from the registry, and its stored bytes unless another snapshot uses them.

        A model used by another task is kept unless ``force``: False (``ValueError`` with
        ``raise_on_errors``). An unknown id is always a ``ValueError``. Weights registered by
        URL (import_model, register_uri) belong to their owner and are never deleted.
        """
        from clearml_hooks.store import model_ops

        store = model._store if isinstance(model, Model) else default_store()
        model_id = model.id if isinstance(model, Model) else str(model)
        catalog = store.catalog
        model_ops.get_row(catalog, model_id)
        if not force:
            users = model_ops.users_of(catalog, model_id)
            if users:
                msg = (f"model {model_id} is used by task(s) {', '.join(users)}; "
                       "pass force=True to remove it anyway")
                if raise_on_errors:
                    raise ValueError(msg)
                log.warning("clearml-hooks: %s", msg)
                return False
        row, candidates = model_ops.remove(catalog, model_id)
        if not delete_weights_file:
            return True
        from clearml_hooks.store import ingest

        failures: list[str] = []

        def delete_blob(sha: str) -> None:
            for blobs in _stores_holding(store, row["uri"]):
                try:
                    blobs.delete(sha)
                except Exception as exc:
                    failures.append(f"{sha}: {exc}")

        # decided and deleted under the catalog's GC lock: a snapshot being stored right now
        # with the same bytes has pinned them (kept), or stores them again after this
        ingest.collect_blobs(catalog, candidates, delete_blob)
        if failures and raise_on_errors:
            raise ValueError(f"model {model_id} removed, but blob(s) could not be deleted: "
                             + "; ".join(failures))
        return not failures

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._id}>"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Model) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self._id)


# -- bytes helpers --------------------------------------------------------------------------------

_blob_stores: dict[str, Any] = {}
_blob_lock = threading.Lock()


def _blob_store(url: str):
    from clearml_hooks.store.blobs import open_blob_store

    with _blob_lock:
        store = _blob_stores.get(url)
        if store is None:
            store = _blob_stores[url] = open_blob_store(url)
        return store


def _same_store(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        u = u.rstrip("/")
        if u.startswith("file://"):
            u = u[len("file://"):]
        return os.path.abspath(u) if "://" not in u else u

    return norm(a) == norm(b)


def _stores_holding(store: Store, uri: str | None) -> list:
    """The store's blob store, plus the one a content-addressed URL points into."""
    out = [store.blobs]
    m = _BLOB_URL.match(uri or "")
    if m and not _same_store(m.group("root"), store.blobs.url):
        try:
            out.append(_blob_store(m.group("root")))
        except Exception:
            pass
    return out


def _materialize(store: Store, uri: str | None, sha: str, size: int, target: str,
                 force: bool, record: Any, key: str, what: str) -> None:
    """Put the blob's bytes at ``target``, verified against ``sha``.

    A cached copy is trusted only if ``record`` saw it verified and it has not changed since;
    otherwise it is hashed, and fetched again if it differs. ``what`` names the model version.
    """
    from clearml_hooks.store.blobs import BlobMismatch

    if not force and _cached_copy_ok(target, sha, size, record, key):
        return
    record.forget(key)
    if os.path.lexists(target) and not os.path.isdir(target):
        os.unlink(target)  # ours, and wrong: never left where a reader could take it
    os.makedirs(os.path.dirname(target), exist_ok=True)
    errors: list[Exception] = []
    for blobs in _stores_holding(store, uri):
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


def _cached_copy_ok(target: str, sha: str, size: int, record: Any, key: str) -> bool:
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


def _fetch_url(store: Store, uri: str, force: bool) -> str:
    """A local path for a registered URL: local files as they are, remote ones downloaded."""
    from clearml_hooks.store import model_ops

    path = model_ops.local_path_of(uri)
    if path is not None:
        if not os.path.exists(path):
            raise ValueError(f"the model's file {path} does not exist")
        return path
    from clearml_hooks.store.blobs import open_fs, temp_name
    from clearml_hooks.store.safe_paths import safe_name

    name = safe_name(uri.split("?", 1)[0])
    folder = os.path.join(store.cache_dir, "remote", hashlib.sha256(uri.encode()).hexdigest()[:32])
    target = os.path.join(folder, name)
    if os.path.exists(target) and not force:
        return target
    os.makedirs(folder, exist_ok=True)
    fs, remote = open_fs(uri)  # bounded timeouts
    tmp = os.path.join(folder, temp_name(".fetch"))
    try:
        if fs.isdir(remote):
            fs.get(remote.rstrip("/") + "/", tmp, recursive=True)
        else:
            fs.get_file(remote, tmp)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.unlink(tmp)
    return target


def _package_view(store: Store, path: str, is_package: bool, extract: bool | None,
                  force: bool) -> str:
    """A package that is an archive file is extracted unless ``extract_archive=False``."""
    if not is_package or extract is False or os.path.isdir(path):
        if is_package and extract is False and os.path.isdir(path):
            return _zip_folder(path, force, dest=_zip_dest(store, path))
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


def _zip_dest(store: Store, folder: str) -> str:
    """Where the zip of a folder outside the cache goes: the cache, never beside the user's files."""
    name = os.path.basename(os.path.abspath(folder)) or "model"
    key = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:32]
    return os.path.join(store.cache_dir, "zipped", key, name + ".zip")


def _zip_folder(folder: str, force: bool, *, names: Sequence[str] | None = None,
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


def _normalize_url(url: Any) -> str:
    """``file://`` + absolute path for local files; remote URLs must use a scheme the store has."""
    if url is None or (isinstance(url, str) and not url.strip()):
        raise ValueError("a weights URL or path is required")
    url = os.fspath(url)
    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    scheme = url.split("://", 1)[0].lower()
    if scheme == "file":
        return "file://" + os.path.abspath(url[len("file://"):])
    from clearml_hooks.store.blobs import supported_schemes

    supported = supported_schemes()
    if scheme not in supported:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}; supported: "
                         + ", ".join(supported) + " (or a local path)")
    return url


# -- InputModel -------------------------------------------------------------------------------------

class InputModel(Model):
    """A model a task starts from: by id, by the newest match, or imported from a URL."""

    def __init__(self, model_id: str | None = None, name: str | None = None,
                 project: str | None = None, tags: Sequence[str] | None = None,
                 only_published: bool = False, *, store: Store | None = None) -> None:
        if not model_id:
            found = Model.query_models(project_name=project, model_name=name, tags=tags,
                                       only_published=only_published, max_results=1, store=store)
            if not found:
                raise ValueError(f"no model matches project={project!r} name={name!r} "
                                 f"tags={tags!r} only_published={only_published}")
            model_id, store = found[0].id, found[0]._store
        super().__init__(model_id, store=store)

    @classmethod
    def import_model(cls, weights_url: str, config_text: str | None = None,
                     config_dict: Mapping | None = None,
                     label_enumeration: Mapping[str, int] | None = None,
                     name: str | None = None, project: str | None = None,
                     tags: Sequence[str] | None = None, comment: str | None = None,
                     is_package: bool = False, create_as_published: bool = False,
                     framework: str | None = None, *, store: Store | None = None) -> InputModel:
        """Register weights that live at a URL (nothing is copied). A URL that is already
        registered returns that model and ignores the other arguments."""
        from clearml_hooks.store import model_ops

        url = _normalize_url(weights_url)
        text, cdict = _resolve_config(config_text, config_dict)
        labels = _validate_labels(label_enumeration)
        tags = model_ops.clean_tags(tags)
        task = context.current_task()
        store = store or default_store()
        existing = model_ops.find_by_uri(store.catalog, url)
        if existing:
            log.info("clearml-hooks: %s is already registered as model %s", url, existing)
            return cls(existing, store=store)
        if project is None and task is not None:
            project = task.project
        base = os.path.basename(url.split("?", 1)[0].rstrip("/"))
        model_id = model_ops.create_model(
            store.catalog, name=name or (f"Imported by {task.name}" if task else base) or "model",
            project=project, origin="imported",
            framework=canonical_framework(framework) or _guess_framework(base), uri=url,
            comment=comment or "", tags=tags, labels=labels, config_text=text, config_dict=
            json.loads(cdict) if cdict else None, is_package=is_package,
            published=create_as_published, ready=True)
        return cls(model_id, store=store)

    @classmethod
    def load_model(cls, weights_url: str, load_archived: bool = False, *,
                   store: Store | None = None) -> InputModel | None:
        """The model registered at this URL, or None."""
        from clearml_hooks.store import model_ops

        store = store or default_store()
        model_id = model_ops.find_by_uri(store.catalog, _normalize_url(weights_url),
                                         include_archived=load_archived)
        return cls(model_id, store=store) if model_id else None

    def connect(self, task: Task, name: str | None = None) -> None:
        """Record this model as an input of ``task``; the task takes its labels if it has none."""
        task.wait_registered()
        # without a name the link keeps the one it has (lookups fall back to the model's name)
        self._store.catalog.link_model(task.id, self._id, "input", name=name)
        if not task.get_labels_enumeration():
            labels = self.labels
            if labels:
                task.connect_label_enumeration(labels)


# -- OutputModel ------------------------------------------------------------------------------------

class OutputModel(Model):
    """A model a task produces. Weights go through the content-addressed store (deduplicated),
    in the background by default; the user's files are left alone unless ``auto_delete_file``."""

    _default_output_uri: str | None = None

    def __init__(self, task: Task | None = None, config_text: str | None = None,
                 config_dict: Mapping | None = None,
                 label_enumeration: Mapping[str, int] | None = None, name: str | None = None,
                 tags: Sequence[str] | None = None, comment: str | None = None,
                 framework: str | None = None, base_model_id: str | None = None) -> None:
        from clearml_hooks.store import model_ops
        if task is None:
            task = context.current_task()
            if task is None:
                raise ValueError("OutputModel needs a task: pass task=... or call Task.init() first")
        text, cdict = _resolve_config(config_text, config_dict)
        labels = _validate_labels(label_enumeration) if label_enumeration is not None else None
        tags = model_ops.clean_tags(tags) if tags is not None else None
        self._task = task
        self._store = task.store
        self._link_name = None
        self._upload_url: str | None = None
        task.wait_registered()
        catalog = task.store.catalog
        task_row = catalog.get_task(task.id) or {}
        if base_model_id:
            model_ops.get_row(catalog, base_model_id)
            values: dict[str, Any] = {"task_id": task.id}
            if labels is not None:
                values["labels"] = json.dumps(labels)
            if text is not None:
                values["config_text"], values["config_dict"] = text, cdict
            if name:
                values["name"] = name
            if comment is not None:
                values["comment"] = comment
            if framework:
                values["framework"] = canonical_framework(framework)
            model_ops.update_fields(catalog, base_model_id, check_published=True, **values)
            if tags is not None:
                model_ops.set_tags(catalog, base_model_id, tags)
            self._id = base_model_id
            catalog.link_model(task.id, base_model_id, "output")
        else:
            if labels is None:
                labels = json.loads(task_row.get("labels") or "{}")
            self._id = model_ops.create_model(
                catalog, name=name or task.name, project_id=task_row.get("project_id"),
                task_id=task.id, origin="manual", framework=canonical_framework(framework),
                comment=comment or "", tags=tags or [], labels=labels, config_text=text,
                config_dict=json.loads(cdict) if cdict else None,
                parent_id=_parent_input(task, name), link_direction="output")
        if self._default_output_uri:
            self.set_upload_destination(self._default_output_uri)

    # -- ClearML's read-write properties --------------------------------------------------------

    @Model.config_text.setter  # type: ignore[attr-defined]
    def config_text(self, value: str) -> None:
        self.update_design(config_text=value)

    @Model.config_dict.setter  # type: ignore[attr-defined]
    def config_dict(self, value: Mapping) -> None:
        self.update_design(config_dict=value)

    @Model.labels.setter  # type: ignore[attr-defined]
    def labels(self, value: Mapping[str, int]) -> None:
        self.update_labels(value)

    @property
    def upload_storage_uri(self) -> str:
        return self._upload_url or self._store.blobs.url

    # -- connecting -----------------------------------------------------------------------------

    def connect(self, task: Task, name: str | None = None) -> None:
        """Name this model on its task (``task.models['output'][name]``)."""
        if task is not self._task and getattr(task, "id", None) != self._task.id:
            raise ValueError("an OutputModel can only be connected to the task that created it")
        self._link_name = name
        self._store.catalog.link_model(task.id, self._id, "output", name=name)
        if not task.get_labels_enumeration():
            labels = self.labels
            if labels:
                task.connect_label_enumeration(labels)

    # -- design and labels ----------------------------------------------------------------------

    def update_labels(self, labels: Mapping[str, int]) -> bool:
        """Replace the label enumeration (``{label: int}``); the task takes it if it has none."""
        from clearml_hooks.store import model_ops

        labels = _validate_labels(labels)
        model_ops.update_fields(self._catalog, self._id, check_published=True,
                                labels=json.dumps(labels))
        if not self._task.get_labels_enumeration():
            self._task.connect_label_enumeration(labels)
        return True

    def update_design(self, config_text: str | None = None,
                      config_dict: Mapping | None = None) -> bool:
        from clearml_hooks.store import model_ops

        text, cdict = _resolve_config(config_text, config_dict)
        model_ops.update_fields(self._catalog, self._id, check_published=True,
                                config_text=text, config_dict=cdict)
        return True

    # -- destinations ---------------------------------------------------------------------------

    def set_upload_destination(self, uri: str) -> None:
        """Store this model's weights under ``uri`` (a folder or s3://, gs://, ...), still
        content-addressed. ``ValueError`` when the destination cannot be written."""
        if not uri:
            return
        uri = os.fspath(uri)
        if "://" not in uri:
            uri = os.path.abspath(os.path.expanduser(uri))
        try:
            blobs = _blob_store(uri)
            blobs.writable()
        except ValueError:
            raise
        except Exception as exc:
            with _blob_lock:
                _blob_stores.pop(uri, None)
            raise ValueError(f"cannot write to the upload destination {uri}: "
                             f"{type(exc).__name__}: {exc}") from exc
        self._upload_url = None if _same_store(blobs.url, self._store.blobs.url) else uri

    @classmethod
    def set_default_upload_uri(cls, output_uri: str | None) -> None:
        cls._default_output_uri = str(output_uri) if output_uri else None

    @classmethod
    def wait_for_uploads(cls, timeout: float | None = None,
                         max_num_uploads: int | None = None) -> bool:
        """Wait until every weights upload started in this process is stored; False on timeout."""
        current = context.current_task()
        if current is None:
            return True
        current.store.worker.start()
        return current.store.worker.wait(timeout)

    # -- weights --------------------------------------------------------------------------------

    def update_weights(self, weights_filename: str | None = None, upload_uri: str | None = None,
                       target_filename: str | None = None, auto_delete_file: bool = False,
                       register_uri: str | None = None, iteration: int | None = None,
                       update_comment: bool = True, is_package: bool = False,
                       async_enable: bool = True, **kwargs: Any) -> str | None:
        """Store a new snapshot of this model from a file (a folder is stored as a package), or
        register weights already at ``register_uri`` (alias ``registered_uri``).

        Returns the weights URL once known: at once with ``register_uri`` or
        ``async_enable=False``; with ``async_enable=True`` the bytes are hashed and stored in the
        background and None is returned (``wait_for_uploads``, then ``url``).
        """
        if "registered_uri" in kwargs:
            if register_uri is not None:
                raise ValueError("pass register_uri or registered_uri, not both")
            register_uri = kwargs.pop("registered_uri")
        if kwargs:
            raise TypeError(f"update_weights() got unexpected keyword arguments: {sorted(kwargs)}")
        if (weights_filename is None) == (register_uri is None):
            raise ValueError("update_weights needs exactly one of weights_filename (a local file "
                             "to store) or register_uri (weights already stored elsewhere)")
        # a published model is refused inside the journal transaction (no extra round trip)
        if iteration is None:
            iteration = self._task.capturer.iteration
        elif not isinstance(iteration, int) or isinstance(iteration, bool):
            raise ValueError(f"iteration must be an integer, got {iteration!r}")
        if register_uri is not None:
            from clearml_hooks.store import model_ops

            url = _normalize_url(register_uri)
            model_ops.register_uri(self._catalog, self._id, url, iteration=iteration,
                                   framework=None if self.framework else _guess_framework(url),
                                   comment=None, is_package=is_package)
            return url
        path = os.path.abspath(os.fspath(weights_filename))
        if not os.path.exists(path):
            raise ValueError(f"weights file {path} does not exist")
        if upload_uri:
            self.set_upload_destination(upload_uri)
        if os.path.isdir(path):
            return self._store_weights([path], root=path, kind="dir", name=target_filename,
                                       iteration=iteration, is_package=True,
                                       auto_delete=auto_delete_file, async_enable=async_enable)
        return self._store_weights([path], root=None, kind="file", name=target_filename,
                                   iteration=iteration, is_package=is_package,
                                   auto_delete=auto_delete_file, async_enable=async_enable)

    def update_weights_package(self, weights_filenames: Sequence[str] | None = None,
                               weights_path: str | None = None, upload_uri: str | None = None,
                               target_filename: str | None = None, iteration: int | None = None,
                               async_enable: bool = True, auto_delete_file: bool = False) -> str | None:
        """Store several files (or a folder) as one package snapshot; files keep their paths
        relative to their common folder."""
        if (not weights_filenames) == (not weights_path):
            raise ValueError("update_weights_package needs exactly one of weights_filenames "
                             "(a list of files) or weights_path (a folder)")
        if self.published:
            from clearml_hooks.store.model_ops import ModelPublished

            raise ModelPublished(f"model {self._id} is published: its weights cannot be updated")
        if iteration is None:
            iteration = self._task.capturer.iteration
        if upload_uri:
            self.set_upload_destination(upload_uri)
        if weights_path:
            root = os.path.abspath(os.fspath(weights_path))
            if not os.path.isdir(root):
                raise ValueError(f"weights_path {root} is not a folder")
            paths = [root]
        else:
            if isinstance(weights_filenames, (str, os.PathLike)):
                weights_filenames = [weights_filenames]  # type: ignore[list-item]
            paths = [os.path.abspath(os.fspath(p)) for p in weights_filenames or []]
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise ValueError(f"weights files do not exist: {', '.join(missing)}")
            root = os.path.commonpath([os.path.dirname(p) for p in paths])
        return self._store_weights(paths, root=root, kind="dir", name=target_filename,
                                   iteration=iteration, is_package=True,
                                   auto_delete=auto_delete_file, async_enable=async_enable)

    def _store_weights(self, paths: list[str], *, root: str | None, kind: str, name: str | None,
                       iteration: int | None, is_package: bool, auto_delete: bool,
                       async_enable: bool) -> str | None:
        """Stage and journal the files as a new snapshot, exactly as a hooked save is (same
        exactness and durability); the worker stores it."""
        import stat as stat_module

        from clearml_hooks.store import model_ops
        from clearml_hooks.store.safe_paths import safe_target_filename

        if name is not None:
            name = safe_target_filename(name)
        if kind == "file":
            files = [(paths[0], name or os.path.basename(paths[0]))]
            source = paths[0]
        else:
            files = []
            for p in paths:
                if os.path.isdir(p):
                    for folder, _dirs, names in os.walk(p):
                        for n in names:
                            full = os.path.join(folder, n)
                            files.append((full, os.path.relpath(full, root)))
                else:
                    files.append((p, os.path.relpath(p, root)))
            files.sort(key=lambda item: item[1])
            if not files:
                raise ValueError(f"no files to store in {root}")
            source = os.path.join(root or "", name) if name else root
        for full, _rel in files:
            mode = os.stat(full).st_mode
            if not stat_module.S_ISREG(mode):
                raise ValueError(f"{full} is not a regular file (a FIFO, device or socket "
                                 "cannot be stored as weights): pass the path of a file")
        row = model_ops.get_row(self._catalog, self._id)
        if row["published"]:
            raise model_ops.ModelPublished(
                f"model {self._id} is published: its weights cannot be updated")
        dest = self._upload_url
        capturer = self._task.capturer
        record = capturer.journal_snapshot(
            files, source=source or "", kind=kind, name=row["name"],
            framework=_guess_framework(files[0][1]) if kind == "file" else None,
            iteration=iteration, model_id=self._id, dest=dest, is_package=is_package,
            strict=True)
        if auto_delete:
            for full, _rel in files:
                try:
                    os.unlink(full)
                except OSError:
                    pass
            if kind == "dir" and root and len(paths) == 1 and os.path.isdir(paths[0]):
                shutil.rmtree(paths[0], ignore_errors=True)
        if async_enable:
            return None
        worker = self._store.worker
        worker.start()
        if not worker.event_for(record.rid).wait(self._task.settings.exit_timeout):
            raise ValueError(f"storing the weights of model {self._id} did not finish in "
                             f"{self._task.settings.exit_timeout:.0f} s"
                             + (f" ({worker.last_error})" if worker.last_error else "")
                             + "; they stay journaled and are stored later")
        snap = self._catalog.snapshot(record.rid) or {}
        if snap.get("state") != "ready":
            raise ValueError(f"storing the weights of model {self._id} failed: "
                             f"{snap.get('error') or snap.get('state') or worker.outcome(record.rid)}")
        return self.url


def _parent_input(task: Task, name: str | None) -> str | None:
    """The task's input model this output was trained from: same name, or the only input."""
    from clearml_hooks.store import model_ops

    inputs = model_ops.task_inputs(task.store.catalog, task.id)
    if name:
        for model_id, link_name in inputs:
            if link_name == name:
                return model_id
    return inputs[0][0] if len(inputs) == 1 else None
