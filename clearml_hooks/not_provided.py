"""ClearML names that clearml-hooks deliberately does not provide, in one place.

``from clearml_hooks import Dataset`` fails with an ``ImportError`` (and ``clearml_hooks.Dataset``
with an ``AttributeError``) whose message says what clearml-hooks is for and what to use instead,
rather than Python's bare "cannot import name".
"""

from __future__ import annotations

import sys

_SCOPE = ("clearml-hooks records models (Task, Model, InputModel, OutputModel, Logger, "
          "StorageManager)")

# name -> what to use instead
NOT_PROVIDED: dict[str, str] = {
    "Dataset": ("not datasets: version data with ClearML's own clearml-data (pip install clearml) "
                "or with DVC (https://dvc.org)"),
    "PipelineController": ("not pipelines: run the steps as scripts, each with its own "
                           "Task.init, or use ClearML's own pipelines (pip install clearml)"),
    "PipelineDecorator": ("not pipelines: run the steps as scripts, each with its own "
                          "Task.init, or use ClearML's own pipelines (pip install clearml)"),
}


def message(name: str) -> str:
    return f"clearml_hooks.{name} is not provided: {_SCOPE}, {NOT_PROVIDED[name]}"


def _importing(depth: int) -> bool:
    """True when the caller ``depth`` frames up is executing ``from ... import name``."""
    import dis

    try:
        frame = sys._getframe(depth + 1)
        return frame.f_code.co_code[frame.f_lasti] == dis.opmap["IMPORT_FROM"]
    except Exception:
        return False


def error(name: str, depth: int = 1) -> Exception:
    """The exception for a not-provided name: ImportError inside ``from ... import`` (Python
    would replace an AttributeError's message there), AttributeError otherwise (so
    ``hasattr`` and ``getattr(..., default)`` keep working)."""
    if _importing(depth + 1):
        return ImportError(message(name), name="clearml_hooks")
    return AttributeError(message(name))
