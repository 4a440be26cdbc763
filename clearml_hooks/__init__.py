"""clearml-hooks: one ``Task.init`` line captures every model your training code saves or loads.

Names are imported lazily, so ``import clearml_hooks`` imports no ML framework and stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Task", "Model", "InputModel", "OutputModel", "Logger", "StorageManager", "__version__"]

_LAZY = {
    "Task": "clearml_hooks.task",
    "Model": "clearml_hooks.models",
    "InputModel": "clearml_hooks.models",
    "OutputModel": "clearml_hooks.models",
    "Logger": "clearml_hooks.logger",
    "StorageManager": "clearml_hooks.storage_manager",
}

if TYPE_CHECKING:
    from clearml_hooks.logger import Logger
    from clearml_hooks.models import InputModel, Model, OutputModel
    from clearml_hooks.storage_manager import StorageManager
    from clearml_hooks.task import Task


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        from clearml_hooks.not_provided import NOT_PROVIDED, error

        if name in NOT_PROVIDED:
            raise error(name)
        raise AttributeError(f"module 'clearml_hooks' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
