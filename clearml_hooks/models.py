"""Model objects: thin views over the catalog (ClearML's ``Model`` API)."""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any

from clearml_hooks.store import Store, default_store


class Model:
    """A registered model. Reads go to the catalog each time, so values are never stale."""

    def __init__(self, model_id: str, *, store: Store | None = None) -> None:
        self._store = store or default_store()
        self.id = model_id
        self._link_name: str | None = None
        if self._row() is None:
            raise ValueError(f"no model with id {model_id!r} in the store at {self._store.home}")

    def _row(self) -> dict:
        return self._store.catalog.get_model(self.id)  # type: ignore[return-value]

    # -- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._row()["name"]

    @property
    def project(self) -> str | None:
        return self._row()["project"]

    @property
    def framework(self) -> str | None:
        return self._row()["framework"]

    @property
    def url(self) -> str | None:
        return self._row()["uri"]

    @property
    def comment(self) -> str:
        return self._row()["comment"]

    @property
    def tags(self) -> list[str]:
        return json.loads(self._row()["tags"])

    @property
    def system_tags(self) -> list[str]:
        return json.loads(self._row()["system_tags"])

    @property
    def labels(self) -> dict[str, int]:
        return json.loads(self._row()["labels"])

    @property
    def task(self) -> str | None:
        return self._row()["task_id"]

    @property
    def published(self) -> bool:
        return bool(self._row()["published"])

    @property
    def archived(self) -> bool:
        return bool(self._row()["archived"])

    @property
    def iteration(self) -> int | None:
        return self._row()["iteration"]

    @property
    def ready(self) -> bool:
        return bool(self._row()["ready"])

    @property
    def created(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self._row()["created"], tz=_dt.timezone.utc)

    @property
    def updated(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self._row()["updated"], tz=_dt.timezone.utc)

    @property
    def source(self) -> str | None:
        """The path the training code saved this model to (auto-captured models)."""
        return self._row()["source"]

    @property
    def snapshots(self) -> list[dict]:
        """Every stored version of this model, oldest first (version, iteration, state, digest)."""
        return self._store.catalog.snapshots_of(self.id)

    # -- bytes --------------------------------------------------------------------------------

    def get_local_copy(self, extract_archive: bool | None = None, raise_on_error: bool = False,
                       force_download: bool = False, version: int | None = None) -> str | None:
        """A local path with the model's bytes under their original file name(s)."""
        try:
            return self._local_copy(force_download, version)
        except Exception:
            if raise_on_error:
                raise
            return None

    def _local_copy(self, force: bool, version: int | None) -> str:
        row = self._row()
        snap_id = row["latest_snapshot_id"]
        if version is not None:
            matches = [s for s in self.snapshots if s["version"] == version]
            if not matches:
                raise ValueError(f"model {self.id} has no version {version}")
            snap_id = matches[0]["id"]
        if snap_id is None:
            raise ValueError(f"model {self.id} has no stored weights yet")
        snap = self._store.catalog.snapshot(snap_id)
        if snap is None or snap["state"] != "ready":
            raise ValueError(f"model {self.id}'s snapshot is not stored yet (state "
                             f"{snap and snap['state']})")
        blobs = self._store.blobs
        if row["origin"] == "imported" and not all(blobs.exists(f["sha256"]) for f in snap["files"]):
            uri = row["uri"] or ""
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            if os.path.exists(path):
                return path
            raise ValueError(f"model {self.id} points at {uri}, which is not reachable")
        source = snap["source_path"] or row["name"]
        base = os.path.basename(source.rstrip(os.sep)) or "model"
        folder = os.path.join(self._store.cache_dir, snap["digest"])
        if snap["kind"] == "file":
            target = os.path.join(folder, base)
            f = snap["files"][0]
            _materialize(blobs, f["sha256"], f["size"], target, force)
            return target
        root = os.path.join(folder, base)
        for f in snap["files"]:
            _materialize(blobs, f["sha256"], f["size"], os.path.join(root, f["relpath"]), force)
        if snap["kind"] == "files":
            return os.path.join(root, os.path.basename(source))  # the checkpoint prefix
        return root

    def get_weights(self, raise_on_error: bool = False, force_download: bool = False) -> str | None:
        return self.get_local_copy(raise_on_error=raise_on_error, force_download=force_download)

    def __repr__(self) -> str:
        return f"<Model {self.id} {self.name!r}>"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Model) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


def _materialize(blobs: Any, sha: str, size: int, target: str, force: bool) -> None:
    if not force and os.path.exists(target) and os.path.getsize(target) == size:
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    blobs.fetch(sha, target)
