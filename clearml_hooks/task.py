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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clearml_hooks import config, context
from clearml_hooks.config import Settings
from clearml_hooks.hooks.selection import parse_auto_connect
from clearml_hooks.launch import env as launch_env
from clearml_hooks.task_compat import TaskCompatMixin
from clearml_hooks.task_registry import TaskRegistryMixin
from clearml_hooks.task_view import TaskModels, TaskView, task_models

if TYPE_CHECKING:
    from clearml_hooks.logger import Logger
    from clearml_hooks.store import Store
    from clearml_hooks.store.pipeline import Capturer

log = logging.getLogger("clearml_hooks")

# ClearML Task.init parameters that do not apply to a model-capture agent, with ClearML's
# defaults: accepted (in ClearML's positions too) and ignored, with a debug line when set
_IGNORED_INIT_ARGS: dict[str, Any] = {
    "reuse_last_task_id": True, "continue_last_task": False, "auto_connect_arg_parser": True,
    "auto_resource_monitoring": True, "auto_connect_streams": True, "deferred_init": False,
}
# keywords of other ClearML versions, also accepted and ignored
_IGNORED_INIT_KWARGS = frozenset({
    *_IGNORED_INIT_ARGS, "output_uri_upload", "report_memory_usage", "reuse_last_task",
    "auto_connect_tensorboard",
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
    attached = False  # joined a task that another process registered (``_attach``)
    end_status = "completed"  # set by task_end: failed (exception), stopped (Ctrl-C, SIGTERM)
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
        from clearml_hooks.hooks import contract

        self._errors_before = contract.error_count()  # capture_stats counts this task's only

    # -- ClearML's class API ------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        project_name: str | None = None,
        task_name: str | None = None,
        task_type: str = "training",
        tags: Sequence[str] | None = None,
        reuse_last_task_id: bool | str = True,
        continue_last_task: bool | str | int = False,
        output_uri: str | bool | None = None,
        auto_connect_arg_parser: bool | Mapping[str, bool] = True,
        auto_connect_frameworks: bool | Mapping[str, Any] = True,
        auto_resource_monitoring: bool | Mapping[str, Any] = True,
        auto_connect_streams: bool | Mapping[str, bool] = True,
        deferred_init: bool = False,
        *,
        settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Task:
        """Start a task and capture the models the code saves and loads from now on.

        The parameters are ClearML's, in ClearML's order; those about experiment tracking
        (``reuse_last_task_id``, ``auto_connect_arg_parser``, ...) are accepted and ignored.
        ``settings``: clearml-hooks settings (README "Configuration") for this task; they win
        over the environment and the config file until the task closes.
        """
        given = {"reuse_last_task_id": reuse_last_task_id,
                 "continue_last_task": continue_last_task,
                 "auto_connect_arg_parser": auto_connect_arg_parser,
                 "auto_resource_monitoring": auto_resource_monitoring,
                 "auto_connect_streams": auto_connect_streams, "deferred_init": deferred_init}
        for key in kwargs:
            if key not in _IGNORED_INIT_KWARGS:
                raise TypeError(f"Task.init() got an unexpected keyword argument {key!r}")
        ignored = [k for k, v in given.items() if v is not _IGNORED_INIT_ARGS[k]] + list(kwargs)
        project = project_name or "default"
        name = task_name or _script_name()
        task_type = getattr(task_type, "value", task_type) or "training"
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type {task_type!r} is not one of: {', '.join(TASK_TYPES)}")
        joined = launch_env.joined_task(auto_connect_frameworks)  # clearml-hooks run, a parent
        if joined is not None:
            return cls._attach(**joined)
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
            config.set_task_values(settings)
            try:
                config.validate()  # a bad setting fails here, never later in a hook
                resolved = Settings.resolve(output_uri=output_uri)
                _check_output_uri(output_uri)
                _check_disabled()
                for key in ignored:  # after the settings, so that log_level applies
                    log.debug("clearml-hooks: Task.init(%s=...) does not apply here; ignored", key)
                from clearml_hooks.store import store_for
                from clearml_hooks.store.capture import Capturer

                store = store_for(resolved)
                task_id = os.urandom(16).hex()
                header = {"t": "task", "task": task_id, "project": project, "name": name,
                          "type": task_type, "tags": list(tags or ()), "ts": time.time(),
                          "host": os.uname().nodename if hasattr(os, "uname") else "",
                          "pid": os.getpid()}
                capturer = Capturer(store, task_id, offline=resolved.offline, task_header=header)
                task = cls(task_id=task_id, project=project, name=name, task_type=task_type,
                           tags=tags or (), store=store, capturer=capturer, settings=resolved)
                from clearml_hooks.hooks import process
                from clearml_hooks.hooks.registry import registry

                if process.capture_allowed():
                    capturer.start()  # journaled now; the catalog learns it in the background
                    registry().instrument(selection, capturer)
                    _follow_tensorboard(auto_connect_frameworks)
                    from clearml_hooks import task_end

                    task_end.install()  # failed on an exception, stopped on Ctrl-C or SIGTERM
                    # Python children (spawn, torchrun, subprocess) join this task
                    launch_env.export(task_id, project, name, task_type, auto_connect_frameworks,
                                      output_uri, triggers=registry().trigger_modules())
                    if launch_env.TASK_ID in os.environ:  # exported (CLEARML_HOOKS_PROPAGATE)
                        task._saved_env = config.export_task_values()
                else:
                    # rank != 0 or a forked worker re-running the script: one task per run, not
                    # per process; this one captures nothing and registers nothing
                    task.inert = True
                    log.debug("clearml-hooks: not rank 0 / a worker process: Task.init is inert")
                cls._make_current(task)
            except BaseException:
                config.set_task_values(None)  # they last as long as the task: there is none
                raise
            return task

    @classmethod
    def _attach(cls, task_id: str, project: str, name: str, task_type: str = "training",
                auto_connect_frameworks: bool | dict = True, output_uri: str | None = None,
                *, owner: bool = False) -> Task:
        """Join a task that another process registered (``clearml-hooks run``, the parent of
        a spawned rank): hooks on as in ``init``, but no task of its own and no end status.

        Called by ``init`` and by the boot ``sitecustomize``; a second call returns the same
        task, re-filtered when the script names its own ``auto_connect_frameworks``.
        ``owner``: this process chose the id and named it to its children before starting
        them (``clearml-hooks run``): it registers the task and reports its end.
        """
        from clearml_hooks.hooks import process
        from clearml_hooks.hooks.registry import registry

        with cls._lock:
            current = cls._current
            if current is not None and not current.closed:
                if current.id == task_id and auto_connect_frameworks is not True \
                        and not current.inert:
                    registry().instrument(_selection(auto_connect_frameworks), current.capturer)
                return current
            selection = _selection(auto_connect_frameworks)
            settings = Settings.resolve(output_uri=output_uri)
            from clearml_hooks.store import store_for
            from clearml_hooks.store.capture import Capturer

            store = store_for(settings)
            # the same task record as the owner's: ingesting it is idempotent, and journaled
            # first here it orders this process's snapshots after their task
            owner_pid = os.environ.get(launch_env.TASK_PID, "")
            header = {"t": "task", "task": task_id, "project": project, "name": name,
                      "type": task_type, "tags": [], "ts": launch_env.started(),
                      "host": os.uname().nodename if hasattr(os, "uname") else "",
                      "pid": int(owner_pid) if owner_pid.isdigit() else os.getpid()}
            capturer = Capturer(store, task_id, offline=settings.offline, task_header=header)
            task = cls(task_id=task_id, project=project, name=name, task_type=task_type,
                       tags=(), store=store, capturer=capturer, settings=settings)
            task.attached = not owner
            if process.capture_allowed():
                if owner:
                    capturer.start()
                # else no capturer.start(): the task record is journaled with the first
                # snapshot, so a process that captures nothing (another rank, a helper) is free
                registry().instrument(selection, capturer)
                _follow_tensorboard(auto_connect_frameworks)
            else:
                task.inert = True  # another rank, a worker: joins, captures nothing
            cls._make_current(task)
            return task

    @classmethod
    def _make_current(cls, task: Task) -> None:
        """The task every layer sees (``clearml_hooks.context``); closed at exit."""
        cls._current = task
        context.set_current(task)
        if not cls._atexit_registered:
            atexit.register(_at_exit)
            cls._atexit_registered = True

    @classmethod
    def current_task(cls) -> Task | None:
        return context.current_task()

    @classmethod
    def get_task(cls, task_id: str | None = None, project_name: str | None = None,
                 task_name: str | None = None, tags: Sequence[str] | None = None,
                 allow_archived: bool = True, task_filter: Any = None) -> Task | TaskView:
        """A stored task by id, or the newest one named ``task_name`` (exactly) in
        ``project_name`` (with one of ``tags``). This process's own open task is returned as
        itself; any other is a read-only ``TaskView``. Raises ``ValueError`` when none matches."""
        import re

        from clearml_hooks.models import default_store

        current = context.current_task()
        if task_id is None and not task_name:
            raise ValueError("Task.get_task needs task_id, or task_name (and project_name)")
        if current is not None and not current.closed and (
                current.id == task_id or (task_id is None and current.name == task_name and
                                          project_name in (None, current.project) and not tags)):
            return current
        store = default_store()
        if task_id is None:
            pattern = "^" + re.escape(task_name) + "$"  # type: ignore[arg-type]
            if isinstance(tags, str):
                tags = [tags]
            ids = store.catalog.query_task_ids(project_name, pattern, tags)
            if not ids:
                where = f" in project {project_name!r}" if project_name else ""
                raise ValueError(f"no task named {task_name!r}{where}")
            task_id = ids[0]
        row = store.catalog.get_task(task_id)
        if row is None:
            raise ValueError(f"no task with id {task_id!r}")
        return TaskView(store, row)

    @classmethod
    def get_tasks(cls, task_ids: Sequence[str] | None = None, project_name: str | None = None,
                  task_name: str | None = None, tags: Sequence[str] | None = None,
                  allow_archived: bool = True, task_filter: Any = None) -> list[Task | TaskView]:
        """Tasks by id, or those whose name matches ``task_name`` (a regular expression, as in
        ClearML) in ``project_name`` with one of ``tags``, newest first."""
        if task_ids:
            return [cls.get_task(task_id=task_id) for task_id in task_ids]
        ids = cls.query_tasks(project_name=project_name, task_name=task_name, tags=tags)
        return [cls.get_task(task_id=task_id) for task_id in ids]

    # -- lifecycle ------------------------------------------------------------------------------

    def wait_registered(self, timeout: float | None = 120.0) -> None:
        """Wait until the task row is in the catalog (API calls that read it need it)."""
        if self.inert:
            return
        self.store.wait()
        if not self.capturer.wait_task_ingested(timeout):
            from clearml_hooks.store import StoreUnavailable

            worker = self.store.worker
            raise StoreUnavailable(
                f"task {self.id} is not in the model store yet after {timeout} s"
                + (f" ({worker.last_error})" if worker.last_error else "")
                + "; captured snapshots are safe in the local journal")

    def flush(self, wait_for_uploads: bool = False, timeout: float | None = None) -> bool:
        """Wait (if asked) until every captured snapshot is stored. True when nothing is left."""
        if not wait_for_uploads:
            return self.capturer.pending() == 0
        self.store.worker.start()
        return self.capturer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop capturing, wait (bounded) for pending snapshots, mark the task completed."""
        with Task._lock:
            if self.closed:
                return
            from clearml_hooks.hooks.registry import registry

            if Task._current is self:
                registry().uninstrument()
                from clearml_hooks.hooks import tensorboard

                tensorboard.uninstall()
            self.closed = True
            if Task._current is self:
                Task._current = None
                context.set_current(None)
                config.set_task_values(None)  # Task.init(settings=) last as long as the task
            launch_env.unexport(self.id)
            config.unexport(self.__dict__.pop("_saved_env", {}))
        if self.inert:
            return
        if not self.attached:  # the process that registered the task reports its end
            self.capturer.journal_status(self.end_status)
        _drain(self, self.settings.exit_timeout if timeout is None else timeout)
        if Task._current is None:
            # nothing captures now: a journal with records left becomes recoverable by others
            self.store.close_journal()

    def mark_completed(self) -> None:
        self.close()

    def __enter__(self) -> Task:
        return self

    def __exit__(self, exc_type: Any = None, *exc: Any) -> None:
        if exc_type is not None:
            self.end_status = "stopped" if issubclass(exc_type, KeyboardInterrupt) else "failed"
        self.close()

    # -- iteration, stats ---------------------------------------------------------------------

    def set_last_iteration(self, iteration: int) -> None:
        """The iteration recorded with the next captured snapshots."""
        iteration = int(iteration)
        if not -(2**63) <= iteration <= 2**63 - 1:
            raise ValueError(f"iterations must fit in 64 bits (-2**63 .. 2**63 - 1), got {iteration}")
        self.capturer.iteration = iteration

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
        """Counters: saves, loads, skipped_stream, protected_by_link, agent_errors (since this
        task started), ..."""
        from clearml_hooks.hooks import contract

        stats = dict(self.capturer.stats)
        stats["agent_errors"] = contract.error_count() - self._errors_before
        return stats

    # -- models -------------------------------------------------------------------------------

    @property
    def models(self) -> TaskModels:
        """``{'input': [...], 'output': [...]}``, each list indexable by position and by name."""
        self.wait_registered()
        return task_models(self.store, self.id)

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.project}/{self.name}>"


def _selection(auto_connect_frameworks: Any):
    """The filter per framework key; the keys are the bindings' (entry points, README), and
    ``tensorboard`` (its steps become the task's iteration)."""
    from clearml_hooks.hooks import tensorboard
    from clearml_hooks.hooks.registry import registry

    return parse_auto_connect(auto_connect_frameworks,
                              (*registry().framework_keys(), tensorboard.KEY))


def _follow_tensorboard(auto_connect_frameworks: Any) -> None:
    """TensorBoard's steps become the task's iteration, unless switched off."""
    from clearml_hooks.hooks import tensorboard

    if tensorboard.wanted(auto_connect_frameworks):
        tensorboard.install()


def _check_disabled() -> None:
    """A ``disabled`` key that no binding has is a typo, or a framework not installed here."""
    from clearml_hooks.hooks import tensorboard
    from clearml_hooks.hooks.registry import registry

    keys = (*registry().framework_keys(), tensorboard.KEY)
    unknown = sorted(config.get("disabled") - {"*", *keys})
    if unknown:
        found = config.source("disabled")
        log.warning("clearml-hooks: setting 'disabled' (from %s) names no known framework: %s; "
                    "the keys are: %s", found[1] if found else "?", ", ".join(unknown),
                    ", ".join(keys))


def _check_output_uri(output_uri: Any) -> None:
    if output_uri in (None, True, False):
        return
    uri = os.fspath(output_uri)
    if "://" in uri:
        from clearml_hooks import plugins

        scheme = uri.split("://", 1)[0]
        if scheme not in plugins.entry_points("clearml_hooks.blob_stores"):
            from clearml_hooks.store.blobs import open_blob_store

            open_blob_store(uri)  # raises a clear ValueError for an unknown scheme


def _script_name() -> str:
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else "untitled"


UNREACHABLE_GRACE = 10.0  # seconds an exit waits for a store that keeps failing


def _drain(task: Task, timeout: float) -> None:
    """Give the worker a bounded time to store what is journaled; say what is left.

    An embedded (SQLite) store that was never opened and holds nothing but the task's own
    records is left to the next process that opens it: a run that saved nothing pays nothing.
    """
    capturer = task.capturer
    if capturer.offline:
        saves = capturer.stats.get("saves", 0)
        if saves:
            try:
                capturer.keep_pending_private()
            except Exception as exc:  # close() never raises into the user's code
                log.warning("clearml-hooks: could not keep pending snapshots private: %s", exc)
            log.warning("clearml-hooks: offline: %d snapshot(s) of task %s are journaled in %s; "
                        "run `clearml-hooks sync` to store them", saves, task.id,
                        task.store.journal_root)
        return
    start = time.monotonic()
    lazy = not task.store.is_open and task.settings.catalog_url.startswith("sqlite") and \
        not capturer.stats.get("saves") and not capturer.stats.get("loads")
    if lazy:
        return
    try:
        worker = task.store.worker
        worker.start()
        deadline = start + timeout
        while not capturer.flush(min(0.5, max(0.0, deadline - time.monotonic()))):
            now = time.monotonic()
            # the store is unreachable: waiting out the whole budget would not help
            if now >= deadline or (worker.waiting_since is not None
                                   and now - worker.waiting_since > UNREACHABLE_GRACE):
                break
        left = capturer.pending()
        if left:
            capturer.keep_pending_private()
            log.warning(
                "clearml-hooks: %d record(s) of task %s are not stored yet after %.0f s; they "
                "are journaled and will be finished by the next run or `clearml-hooks sync`",
                left, task.id, time.monotonic() - start)
    except Exception as exc:
        log.warning("clearml-hooks: could not finish pending snapshots: %s", exc)


def _at_exit() -> None:
    task = Task._current
    if task is not None and not task.closed:
        try:
            timeout = float(config.get("exit_timeout"))  # may have changed since Task.init
        except ValueError:
            timeout = task.settings.exit_timeout
        task.close(timeout=timeout)
