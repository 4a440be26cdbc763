"""``Model``: a registered model by id, a thin view over the catalog with ClearML's API, so code
written against the ClearML model docs runs unchanged.

Reads go to the catalog each time (values are never stale across processes); every write is one
transaction in ``store/model_ops.py``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from clearml_hooks.frameworks import canonical_framework
from clearml_hooks.model_reporting import ModelReporting
from clearml_hooks.models.archives import package_view, zip_folder
from clearml_hooks.models.fetching import fetch_url, materialize, stores_holding
from clearml_hooks.models.fields import default_store, parse_config_text
from clearml_hooks.store import Store

log = logging.getLogger("clearml_hooks")


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
    def store(self) -> Store:
        """The store this model is registered in (a model of another store stays in that one)."""
        return self._store

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
        return parse_config_text(row["config_text"])

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
                path = fetch_url(self._store, row["uri"], force)
                return package_view(self._store, path, row["is_package"], extract, force)
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
            path = fetch_url(self._store, row["uri"] or "", force)
            return package_view(self._store, path, row["is_package"], extract, force)
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
                materialize(self._store, uri, sha, size, target, force, record, name, what)
                return package_view(self._store, target, row["is_package"], extract, force)
            root = join_inside(folder, base, model=mid)
            for rel, sha, size in files:
                materialize(self._store, uri, sha, size, join_inside(root, rel, model=mid),
                             force, record, os.path.join(base, rel), what)
            if snap["kind"] == "files":
                return os.path.join(root, base)  # the checkpoint prefix
            if extract is False:
                return zip_folder(root, force, names=[rel for rel, _, _ in files])
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
            for blobs in stores_holding(store, row["uri"]):
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

