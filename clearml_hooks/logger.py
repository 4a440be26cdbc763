"""ClearML's ``Logger``, as far as a model-capture agent needs it.

Training scripts written for ClearML call ``task.get_logger().report_scalar(..., iteration=n)``;
ClearML records the last reported iteration with the models saved afterwards, and so do we.
Task-level metrics, plots and media are not stored here (metrics *on models* are: see
``Model.report_scalar``); those calls are accepted so that the scripts run unchanged, with one
debug line per kind.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clearml_hooks.task import Task

log = logging.getLogger("clearml_hooks")


class Logger:
    """Per-task logger: ``task.get_logger()`` or ``Logger.current_logger()``."""

    def __init__(self, task: Task) -> None:
        self._task = task
        self._last: dict[tuple[str, str], tuple[int, float]] = {}
        self._ignored: set[str] = set()

    @classmethod
    def current_logger(cls) -> Logger | None:
        from clearml_hooks import context

        task = context.current_task()
        return task.get_logger() if task is not None else None

    def report_scalar(self, title: str, series: str, value: float, iteration: int) -> None:
        """Record the iteration for the snapshots saved from now on (ClearML's behaviour)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"report_scalar value must be a number, got {value!r}")
        if isinstance(iteration, bool) or not isinstance(iteration, int):
            raise ValueError(f"report_scalar iteration must be an int, got {iteration!r}")
        self._last[(str(title), str(series))] = (iteration, float(value))
        if iteration >= self._task.get_last_iteration():
            self._task.set_last_iteration(iteration)

    def report_single_value(self, name: str, value: float) -> None:
        self._last[("Summary", str(name))] = (-(2**31), float(value))

    def get_last_scalar(self, title: str, series: str) -> float | None:
        """The last value reported for (title, series) in this process; NaN stays NaN."""
        entry = self._last.get((title, series))
        return entry[1] if entry is not None else None

    @property
    def last_scalars(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (title, series), (_iteration, value) in self._last.items():
            out.setdefault(title, {})[series] = value
        return out

    def flush(self, wait: bool = False) -> bool:
        return True

    def set_default_upload_destination(self, uri: str) -> None:
        log.debug("clearml-hooks: Logger.set_default_upload_destination(%r) ignored", uri)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("report_"):
            raise AttributeError(f"'Logger' object has no attribute {name!r}")

        def accepted(*args: Any, **kwargs: Any) -> None:
            iteration = kwargs.get("iteration")
            if isinstance(iteration, int) and not isinstance(iteration, bool) and (
                    iteration >= self._task.get_last_iteration()):
                self._task.set_last_iteration(iteration)
            if name not in self._ignored:
                self._ignored.add(name)
                log.debug("clearml-hooks: Logger.%s is accepted but task-level reports are "
                          "not stored (report on a Model to keep metrics)", name)

        return accepted
