"""The current task, held in one place that every layer may read and only ``Task`` sets.

Models, the logger and the launch helpers ask here instead of importing ``task``, so imports
point one way (``task -> models -> store``).
"""

from __future__ import annotations

from typing import Any

_current: Any = None


def current_task() -> Any:
    """The open task of this process, or None."""
    task = _current
    return task if task is not None and not getattr(task, "closed", False) else None


def set_current(task: Any) -> None:
    global _current
    _current = task
