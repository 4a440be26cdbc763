"""Task: the one line a user adds. ``Task.init`` registers the task and turns the hooks on.

``Task.init`` stays cheap (a few ms): the store opens in a background thread and frameworks are
patched when they are imported, so nothing heavy runs before the user's own code.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clearml_hooks.config import BUILTIN_BLOB_SCHEMES, Settings, lookup
from clearml_hooks.hooks.selection import FRAMEWORK_KEYS, parse_auto_connect
from clearml_hooks.task_compat import TaskCompatMixin
from clearml_hooks.task_registry import TaskRegistryMixin

if TYPE_CHECKING:
    from clearml_hooks.logger import Logger
    from clearml_hooks.store import Store
    from clearml_hooks.store.pipeline import Capturer

log = logging.getLogger("clearml_hooks")

# ClearML Task.init keywords that do not apply to a model-capture agent: accepted and ignored
_IGNORED_INIT_KWARGS = frozenset({
    "reuse_last_task_id", "continue_last_task", "auto_connect_arg_parser",
    "auto_resource_monitoring", "auto_connect_streams", "deferred_init", "output_uri_upload",
    "report_memory_usage", "reuse_last_task", "auto_connect_tensorboard",
})

TASK_TYPES = ("training", "testing", "inference", "data_processing", "application", "monitor",
              "controller", "optimizer", "service", "qc", "custom")


class TaskTypes:
    """ClearML's ``Task.TaskTypes`` spellings."""

    training = "training"
    testing = "testing"
    inference = "inference"
    data_processing = "data_processing"
    application = "application"
    monitor = "monitor"
    controller = "controller"
    optimizer = "optimizer"
    service = "service"
    qc = "qc"
    custom = "custom"


class Task(TaskRegistryMixin, TaskCompatMixin):
    """A run of training code whose models are captured and registered."""

    TaskTypes = TaskTypes

    _current: Task | None = None
    _lock = threading.RLock()
    _atexit_registered = False

    def __init__(self, *, task_id: str, project: str, name: str, task_type: str,
                 tags: Sequence[str], store: Store, capturer: Capturer,
                 settings: Settings) -> None:
        self.id = task_id
        self.project = project
        self.name = name
        self.task_type = task_type
        self.tags = list(tags)
        self.store = store
        self.capturer = capturer
        self.settings = settings
        self.closed = False
        self.inert = False
        self._logger: Logger | None = None
        self._created = threading.Event()

    # -- ClearML's class API ------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        project_name: str | None = None,
        task_name: str | None = None,
        task_type: str = "training",
        tags: Sequence[str] | None = None,
        auto_connect_frameworks: bool | dict = True,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> Task:
        """Start a task and capture the models the code saves and loads from now on."""
        for key in kwargs:
            if key in _IGNORED_INIT_KWARGS:
                log.debug("clearml-hooks: Task.init(%s=...) does not apply here; ignored", key)
            else:
                raise TypeError(f"Task.init() got an unexpected keyword argument {key!r}")
        project = project_name or "default"
        name = task_name or _script_name()
        task_type = getattr(task_type, "value", task_type) or "training"
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type {task_type!r} is not one of: {', '.join(TASK_TYPES)}")
        with cls._lock:
            current = cls._current
            if current is not None and not current.closed:
                if (current.project, current.name) == (project, name):
                    return current
                raise RuntimeError(
                    f"Task {current.project}/{current.name} is still open: call "
                    "Task.current_task().close() before starting another task "
                    f"({project}/{name})")
            selection = _selection(auto_connect_frameworks)
            settings = Settings.resolve(output_uri=output_uri)
            _check_output_uri(output_uri)
            from clearml_hooks.store import store_for
            from clearml_hooks.store.pipeline import Capturer

            store = store_for(settings)
            task_id = os.urandom(16).hex()
            capturer = Capturer(store, task_id, offline=settings.offline)
            task = cls(task_id=task_id, project=project, name=name, task_type=task_type,
                       tags=tags or (), store=store, capturer=capturer, settings=settings)
            from clearml_hooks.hooks import process
            from clearml_hooks.hooks.registry import registry

            if process.capture_allowed():
                threading.Thread(target=task._register, name="clearml-hooks-task",
                                 daemon=True).start()
                registry().instrument(selection, capturer)
            else:
                # rank != 0 or a forked worker re-running the script: one task per run, not per
                # process; this one captures nothing and registers nothing
                task.inert = True
                task._created.set()
                capturer.registered.set()
                log.debug("clearml-hooks: not rank 0 / a worker process: Task.init is inert")
            cls._current = task
            if not cls._atexit_registered:
                atexit.register(_at_exit)
                cls._atexit_registered = True
            return task

    @classmethod
    def current_task(cls) -> Task | None:
        current = cls._current
        return current if current is not None and not current.closed else None

    @classmethod
    def get_task(cls, task_id: str) -> TaskRecord:
        from clearml_hooks.store import default_store

        row = default_store().catalog.get_task(task_id)
        if row is None:
            raise ValueError(f"no task with id {task_id!r}")
        return TaskRecord(row)

    # -- lifecycle ------------------------------------------------------------------------------

    def _register(self) -> None:
        try:
            self.store.catalog.create_task(self.id, self.project, self.name, self.task_type,
                                           self.tags)
            self.capturer.registered.set()
            from clearml_hooks.store.pipeline import Recover

            self.capturer.pipeline.submit(Recover())
        except Exception:
            from clearml_hooks.hooks import contract

            try:
                contract.agent_error("registering the task in the model store")
            except Exception:
                pass
        finally:
            self._created.set()
            self.capturer.registered.set()  # never leave a hook waiting on a failed store

    def wait_registered(self, timeout: float | None = 120.0) -> None:
        self._created.wait(timeout)
        self.store.wait()

    def flush(self, wait_for_uploads: bool = False, timeout: float | None = None) -> bool:
        """Wait (if asked) until every captured snapshot is stored. True when nothing is left."""
        self.wait_registered()
        if not wait_for_uploads:
            return self.capturer.pipeline.outstanding() == 0
        return self.capturer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop capturing, wait (bounded) for pending snapshots, mark the task completed."""
        with Task._lock:
            if self.closed:
                return
            from clearml_hooks.hooks.registry import registry

            if Task._current is self:
                registry().uninstrument()
            self.closed = True
            if Task._current is self:
                Task._current = None
        if self.inert:
            return
        _drain(self, self.settings.exit_timeout if timeout is None else timeout)
        try:
            self.store.catalog.update_task(self.id, status="completed")
        except Exception:
            log.warning("clearml-hooks: could not mark task %s completed", self.id)

    def mark_completed(self) -> None:
        self.close()

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- iteration, stats ---------------------------------------------------------------------

    def set_last_iteration(self, iteration: int) -> None:
        """The iteration recorded with the next captured snapshots."""
        self.capturer.iteration = int(iteration)

    def get_last_iteration(self) -> int:
        return self.capturer.iteration or 0

    def get_logger(self) -> Logger:
        """ClearML's logger: ``report_scalar(..., iteration=n)`` sets the iteration recorded
        with the snapshots saved afterwards."""
        if self._logger is None:
            from clearml_hooks.logger import Logger

            self._logger = Logger(self)
        return self._logger

    @property
    def capture_stats(self) -> dict[str, int]:
        """Counters: saves, loads, skipped_stream, protected_by_link, agent_errors, ..."""
        from clearml_hooks.hooks import contract

        stats = dict(self.capturer.stats)
        stats["agent_errors"] = contract.error_count()
        return stats

    # -- models -------------------------------------------------------------------------------

    @property
    def models(self) -> TaskModels:
        """``{'input': [...], 'output': [...]}``, each list indexable by position and by name."""
        self.wait_registered()
        from clearml_hooks.models import Model

        inputs, outputs = TaskModels.List(), TaskModels.List()
        for row in self.store.catalog.task_models(self.id):
            model = Model._from_row(self.store, {"id": row["model_id"]})
            model._link_name = row["link_name"]
            (inputs if row["direction"] == "input" else outputs).append(model)
        return TaskModels(input=inputs, output=outputs)

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.project}/{self.name}>"


class TaskModels(dict):
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


class TaskRecord:
    """A task read back from the catalog (``Task.get_task``)."""

    def __init__(self, row: dict) -> None:
        self.id = row["id"]
        self.name = row["name"]
        self.project = row["project"]
        self.status = row["status"]
        self.task_type = row["task_type"]


def _selection(auto_connect_frameworks: Any):
    from clearml_hooks.hooks.registry import registry

    extra = [k for k in registry().bindings if k not in FRAMEWORK_KEYS]
    if isinstance(auto_connect_frameworks, dict):
        unknown = [k for k in auto_connect_frameworks if k not in FRAMEWORK_KEYS and k not in extra]
        if unknown:  # maybe a third-party binding: look at the entry points (slow path)
            registry().discover_entry_points()
            extra = [k for k in registry().bindings if k not in FRAMEWORK_KEYS]
    return parse_auto_connect(auto_connect_frameworks, extra)


def _check_output_uri(output_uri: Any) -> None:
    if output_uri in (None, True, False):
        return
    uri = os.fspath(output_uri)
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        if scheme not in BUILTIN_BLOB_SCHEMES:
            from clearml_hooks.store.blobs import open_blob_store

            open_blob_store(uri)  # raises a clear ValueError for an unknown scheme


def _script_name() -> str:
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else "untitled"


def _drain(task: Task, timeout: float) -> None:
    start = time.monotonic()
    try:
        task.wait_registered(timeout)
        task.capturer.flush(timeout)
        if not task.capturer.stats.get("saves"):
            return
        from clearml_hooks.store.pipeline import OWNER

        left = [snap for snap in task.store.catalog.pending_snapshots() if snap["owner"] == OWNER]
        remaining = timeout - (time.monotonic() - start)
        if left and not task.capturer.offline and remaining > 0:
            # one last try (the object store may be back), within the exit budget
            task.capturer.pipeline.retry_pending([snap["id"] for snap in left])
            task.capturer.flush(remaining)
            left = [snap for snap in task.store.catalog.pending_snapshots()
                    if snap["owner"] == OWNER]
        if left:
            log.warning(
                "clearml-hooks: %d snapshot(s) of task %s are still pending after %.0f s; they "
                "are journaled and will be finished by the next run or `clearml-hooks sync`",
                len(left), task.id, time.monotonic() - start)
    except Exception as exc:
        log.warning("clearml-hooks: could not finish pending snapshots: %s", exc)


def _after_fork_in_child() -> None:
    """The parent's registration thread does not exist in a forked child: wait for its row."""
    task = Task._current
    if task is None or task._created.is_set():
        return
    task._created = threading.Event()

    def await_parent() -> None:
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                if task.store.catalog.get_task(task.id) is not None:
                    break
                time.sleep(0.05)
        except Exception:
            pass
        finally:
            task._created.set()
            task.capturer.registered.set()

    threading.Thread(target=await_parent, name="clearml-hooks-task", daemon=True).start()


if hasattr(os, "register_at_fork"):
    # (the bounded waits before a fork are in clearml_hooks.store._before_fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    task = Task._current
    if task is not None and not task.closed:
        timeout = float(lookup("exit_timeout", None, task.settings.exit_timeout))
        task.close(timeout=timeout)
