"""A stored task read back from the catalog (``Task.get_task``): ClearML's read side of a Task.

A script that looks at another run (its models, status, tags, labels) gets the same attribute and
method names as on its own ``Task``, without opening that run again or being able to change it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clearml_hooks.store import Store


class TaskModels(dict):
    """``{'input': [...], 'output': [...]}``, each list indexable by position and by name."""

    class List(list):
        """A list of models that can also be indexed by model name."""

        def __getitem__(self, key):  # type: ignore[override]
            if isinstance(key, str):
                for model in reversed(self):
                    if key in (getattr(model, "_link_name", None), model.name):
                        return model
                raise KeyError(key)
            return super().__getitem__(key)

        def keys(self) -> list[str]:
            return [m.name for m in self]


def task_models(store: Store, task_id: str) -> TaskModels:
    """The models a task loaded (``input``) and wrote or named (``output``), oldest first."""
    from clearml_hooks.models import Model

    inputs, outputs = TaskModels.List(), TaskModels.List()
    for row in store.catalog.task_models(task_id):
        model = Model._from_row(store, {"id": row["model_id"]})
        model._link_name = row["link_name"]
        (inputs if row["direction"] == "input" else outputs).append(model)
    return TaskModels(input=inputs, output=outputs)


class TaskView:
    """A read-only view of a stored task. ``reload()`` reads it again (a run still going)."""

    def __init__(self, store: Store, row: dict) -> None:
        self._store = store
        self._set(row)

    def _set(self, row: dict) -> None:
        self._row = dict(row)
        self.id: str = row["id"]
        self.name: str = row["name"]
        self.project: str = row["project"]
        self.task_type: str = row["task_type"]
        self.status: str = row["status"]
        self.comment: str = row.get("comment") or ""

    # -- ClearML's read API ---------------------------------------------------------------------

    def reload(self) -> TaskView:
        row = self._store.catalog.get_task(self.id)
        if row is not None:
            self._set(row)
        return self

    @property
    def tags(self) -> list[str]:
        return list(json.loads(self._row.get("tags") or "[]"))

    def get_tags(self) -> list[str]:
        return self.tags

    @property
    def labels(self) -> dict[str, int]:
        return dict(json.loads(self._row.get("labels") or "{}"))

    def get_labels_enumeration(self) -> dict[str, int]:
        return self.labels

    def get_status(self) -> str:
        """The status now (``in_progress``, ``completed``, ``failed``, ``stopped``)."""
        return self.reload().status

    def get_project_name(self) -> str:
        return self.project

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def models(self) -> TaskModels:
        return task_models(self._store, self.id)

    def get_models(self) -> TaskModels:
        return self.models

    def get_last_iteration(self) -> int:
        """The highest iteration recorded with a snapshot this task wrote (0 if none)."""
        stored = self._row.get("last_iteration")
        best = int(stored) if stored is not None else 0
        catalog = self._store.catalog
        for row in catalog.task_models(self.id):
            if row["direction"] != "output":
                continue
            model = catalog.get_model(row["model_id"])
            if model is None or model.get("task_id") != self.id:
                continue
            for snapshot in catalog.snapshots_of(row["model_id"]):
                if snapshot["iteration"] is not None:
                    best = max(best, int(snapshot["iteration"]))
        return best

    def get_parameters(self, backwards_compatibility: bool = True, cast: bool = False) -> dict:
        """Always empty: hyperparameters are not recorded (models only)."""
        return {}

    @property
    def data(self) -> dict[str, Any]:
        """The stored record, as read (ClearML's ``task.data``)."""
        return dict(self._row)

    def __eq__(self, other: object) -> bool:
        return getattr(other, "id", None) == self.id and hasattr(other, "get_models")

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<TaskView {self.id} {self.project}/{self.name} {self.status}>"
