"""The rest of ClearML's ``Task`` surface that training scripts call, so they run unchanged.

clearml-hooks records models; hyperparameters, artifacts and remote execution belong to a full
experiment manager. These methods keep their ClearML return values (the connected object, the
configuration, True for an upload) and keep parameters and tags in memory for the process, with
one debug line per method, instead of failing the user's script with an AttributeError.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("clearml_hooks")


class TaskCompatMixin:
    """Mixed into ``Task``."""

    _compat_noted: set[str]
    _parameters: dict[str, Any]
    tags: list[str]

    def _note(self, method: str) -> None:
        noted = self.__dict__.setdefault("_compat_noted", set())
        if method not in noted:
            noted.add(method)
            log.debug("clearml-hooks: Task.%s is accepted; clearml-hooks records models only",
                      method)

    def _params(self) -> dict[str, Any]:
        return self.__dict__.setdefault("_parameters", {})

    def connect_configuration(self, configuration: Any, name: str | None = None,
                              description: str | None = None) -> Any:
        """Returns the configuration unchanged (a dict, or the path of a config file)."""
        self._note("connect_configuration")
        return configuration

    def set_parameters(self, *args: Mapping[str, Any], **kwargs: Any) -> None:
        self._note("set_parameters")
        for mapping in args:
            self._params().update(mapping)
        self._params().update(kwargs)

    def set_parameters_as_dict(self, dictionary: Mapping[str, Any]) -> None:
        self.set_parameters(dictionary)

    def set_parameter(self, name: str, value: Any, description: str | None = None,
                      value_type: Any = None) -> None:
        self.set_parameters({name: value})

    def get_parameters(self, backwards_compatibility: bool = True, cast: bool = False) -> dict:
        return dict(self._params())

    def get_parameters_as_dict(self, cast: bool = False) -> dict:
        return dict(self._params())

    def get_parameter(self, name: str, default: Any = None, cast: bool = False) -> Any:
        return self._params().get(name, default)

    def add_tags(self, tags: str | Sequence[str]) -> None:
        """Tags the task (kept in the catalog, shown by ``clearml-hooks tasks list``)."""
        import json

        for tag in [tags] if isinstance(tags, str) else tags:
            if tag not in self.tags:
                self.tags.append(tag)
        if getattr(self, "inert", False):
            return
        self.wait_registered()  # type: ignore[attr-defined]
        self.store.catalog.update_task(self.id, tags=json.dumps(self.tags))  # type: ignore[attr-defined]

    def get_tags(self) -> list[str]:
        return list(self.tags)

    def upload_artifact(self, name: str, artifact_object: Any, *args: Any, **kwargs: Any) -> bool:
        self._note("upload_artifact")
        return True

    def register_artifact(self, name: str, artifact: Any, *args: Any, **kwargs: Any) -> None:
        self._note("register_artifact")

    def set_comment(self, comment: str) -> None:
        self._note("set_comment")

    def set_user_properties(self, *args: Any, **kwargs: Any) -> bool:
        self._note("set_user_properties")
        return True

    def execute_remotely(self, queue_name: str | None = None, clone: bool = False,
                         exit_process: bool = True) -> None:
        """Runs here: there is no remote agent."""
        self._note("execute_remotely")

    def get_output_log_web_page(self) -> str:
        return ""

    @staticmethod
    def add_requirements(package_name: str, package_version: str | None = None) -> None:
        log.debug("clearml-hooks: Task.add_requirements(%r) ignored", package_name)

    def get_registered_artifacts(self) -> dict[str, Any]:
        """Always empty: artifacts are not recorded."""
        return {}

    def set_packages(self, packages: str | Sequence[str] | None) -> None:
        self._note("set_packages")

    @staticmethod
    def running_locally() -> bool:
        """True: there is no remote agent, every run is local."""
        return True

    def get_status(self) -> str:
        """The task's status in the catalog (``in_progress``, ``completed``, ``failed``, ...)."""
        if getattr(self, "inert", False):
            return "completed" if getattr(self, "closed", False) else "in_progress"
        self.wait_registered()  # type: ignore[attr-defined]
        row = self.store.catalog.get_task(self.id)  # type: ignore[attr-defined]
        return row["status"] if row else "in_progress"

    @property
    def status(self) -> str:
        """ClearML's ``task.status``: the same as ``get_status()``."""
        return self.get_status()

    @classmethod
    def query_tasks(cls, project_name: str | None = None, task_name: str | None = None,
                    tags: Sequence[str] | None = None, additional_return_fields: Any = None,
                    task_filter: Any = None) -> list[str]:
        """Ids of the tasks that match, newest first. ``task_name`` is a regular expression
        searched in the name (as in ClearML); ``tags`` match any of them, ``-tag`` excludes."""
        from clearml_hooks.models import default_store

        if isinstance(tags, str):
            tags = [tags]
        return default_store().catalog.query_task_ids(project_name, task_name, tags)
