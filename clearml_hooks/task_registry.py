"""The model-registry side of ``Task``: connect models, update the output model, labels."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clearml_hooks.models import OutputModel
    from clearml_hooks.store import Store

log = logging.getLogger("clearml_hooks")


class TaskRegistryMixin:
    """Mixed into ``Task``; ``self.id``, ``self.store``, ``self.models`` come from Task."""

    id: str
    name: str
    store: Store

    def wait_registered(self, timeout: float | None = 120.0) -> None:  # provided by Task
        raise NotImplementedError

    # -- connecting -----------------------------------------------------------------------------

    def connect(self, mutable: Any, name: str | None = None) -> Any:
        """Connect a model: an ``InputModel`` (or ``Model``) becomes an input of this task, an
        ``OutputModel`` is named on it. Other objects (hyperparameter dicts, argparse) are
        returned unchanged: clearml-hooks records models only."""
        from clearml_hooks.models import InputModel, Model, OutputModel

        if isinstance(mutable, OutputModel):
            mutable.connect(self, name=name)  # type: ignore[arg-type]
            return mutable
        if isinstance(mutable, Model):
            model = mutable if isinstance(mutable, InputModel) else InputModel(
                mutable.id, store=mutable.store)
            model.connect(self, name=name)  # type: ignore[arg-type]
            return mutable
        log.debug("clearml-hooks: Task.connect(%s) records nothing (models only)",
                  type(mutable).__name__)
        return mutable

    def set_input_model(self, model_id: str, name: str | None = None,
                        update_task_design: bool = True, update_task_labels: bool = True) -> None:
        """Record a registered model as an input of this task, by id."""
        from clearml_hooks.models import InputModel

        InputModel(model_id, store=self.store).connect(self, name=name)  # type: ignore[arg-type]

    def get_models(self) -> Any:
        return self.models  # type: ignore[attr-defined]

    # -- labels -----------------------------------------------------------------------------------

    def connect_label_enumeration(self, enumeration: Mapping[str, int]) -> dict[str, int]:
        """Set the task's label enumeration (``{label: int}``). Output models created later
        without their own labels take it, and so do the models this task captures: those
        saved later, and those saved already whose labels were not set on the model itself."""
        from clearml_hooks.models import _validate_labels
        from clearml_hooks.store.task_labels import set_task_labels

        labels = _validate_labels(enumeration)
        self.wait_registered()
        set_task_labels(self.store.catalog, self.id, labels)
        return labels

    set_model_label_enumeration = connect_label_enumeration

    def get_labels_enumeration(self) -> dict[str, int]:
        self.wait_registered()
        row = self.store.catalog.get_task(self.id)
        import json

        return json.loads(row["labels"]) if row and row["labels"] else {}

    # -- output models ----------------------------------------------------------------------------

    def update_output_model(self, model_path: str, name: str | None = None,
                            comment: str | None = None, tags: Sequence[str] | None = None,
                            model_name: str | None = None, iteration: int | None = None,
                            auto_delete_file: bool = False, async_enable: bool = True) -> str | None:
        """Store a file or folder as this task's output model (a remote URL is registered as is).

        ``name`` is the model's name on the task; ``model_name`` its name in the registry
        (default ``"<task name> - <name>"``). Calling again with the same name adds a snapshot
        to the same model instead of creating another one.
        """
        from clearml_hooks.models import OutputModel, _normalize_url

        path = os.fspath(model_path)
        remote = "://" in path and not path.startswith("file://")
        # bad input is refused before a model is created: nothing is left behind without weights
        url = _normalize_url(path) if remote else None
        if not remote and not os.path.exists(os.path.abspath(path.removeprefix("file://"))):
            raise ValueError(f"model_path {path} does not exist: pass a saved file or folder, "
                             "or the URL of weights stored elsewhere")
        registry_name = model_name or (f"{self.name} - {name}" if name else self.name)
        model = self._output_model_named(name, registry_name)
        if model is None:
            model = OutputModel(task=self, name=registry_name, tags=tags,  # type: ignore[arg-type]
                                comment=comment)
        else:
            if tags is not None:
                model.tags = list(tags)
            if comment is not None:
                model.comment = comment
        model.connect(self, name=name)  # type: ignore[arg-type]
        if url is not None:
            return model.update_weights(register_uri=url, iteration=iteration)
        return model.update_weights(weights_filename=path.removeprefix("file://"),
                                    iteration=iteration, auto_delete_file=auto_delete_file,
                                    async_enable=async_enable)

    def _output_model_named(self, name: str | None, registry_name: str) -> OutputModel | None:
        from clearml_hooks.models import OutputModel
        from clearml_hooks.store import model_ops

        self.wait_registered()
        catalog = self.store.catalog
        for row in reversed(catalog.task_models(self.id)):
            if row["direction"] != "output":
                continue
            model_row = model_ops.get_row(catalog, row["model_id"])
            if model_row["origin"] != "manual" or model_row["task_id"] != self.id:
                continue
            if (name and row["link_name"] == name) or model_row["name"] == registry_name:
                return OutputModel.attached(self, row["model_id"],  # type: ignore[arg-type]
                                            row["link_name"])
        return None
