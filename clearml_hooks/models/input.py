"""``InputModel``: a model a task starts from, by id, by the newest match, or imported from a URL
(registered where it is, nothing copied)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from clearml_hooks import context
from clearml_hooks.frameworks import canonical_framework
from clearml_hooks.models.base import Model
from clearml_hooks.models.fields import (
    default_store,
    guess_framework,
    resolve_config,
    validate_labels,
)
from clearml_hooks.models.urls import normalize_url
from clearml_hooks.store import Store

if TYPE_CHECKING:
    from clearml_hooks.task import Task

log = logging.getLogger("clearml_hooks")


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

        url = normalize_url(weights_url)
        text, cdict = resolve_config(config_text, config_dict)
        labels = validate_labels(label_enumeration)
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
            framework=canonical_framework(framework) or guess_framework(base), uri=url,
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
        model_id = model_ops.find_by_uri(store.catalog, normalize_url(weights_url),
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

