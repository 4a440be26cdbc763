"""ClearML's automation API over the registry's event log: ``TriggerScheduler``.

``add_model_trigger`` takes ClearML's arguments and calls ``schedule_function(model_id)`` when a
matching model is published, tagged or archived (or, with none of those, registered). ClearML
polls its server every ``pooling_frequency_minutes``; here the scheduler follows the event log
(LISTEN/NOTIFY on PostgreSQL, a short poll on SQLite), so callbacks run within about a second,
and ``pooling_frequency_minutes`` is only an upper bound on the wait. Running a task in a queue
(``schedule_queue``, ``schedule_task_id``, ``start_remotely``) needs a ClearML server: those
raise ``ValueError`` saying so.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clearml_hooks.store import events as ev

log = logging.getLogger("clearml_hooks.automation")

_NEEDS_SERVER = ("{what} needs a ClearML server (an agent pulling tasks from a queue); "
                 "clearml-hooks runs triggers in this process: pass schedule_function=, or use "
                 "`clearml-hooks watch --exec` to start a command")


@dataclass
class ModelTrigger:
    name: str
    schedule_function: Callable[[str], Any]
    project: str | None = None
    model_name: str | None = None
    on_publish: bool = False
    on_archive: bool = False
    on_tags: list[str] = field(default_factory=list)
    required_tags: list[str] = field(default_factory=list)
    fired: int = 0

    def __post_init__(self) -> None:
        self._name_re = re.compile(self.model_name) if self.model_name else None

    def matches(self, event: ev.Event) -> bool:
        data = event.data
        if event.model_id is None:
            return False
        if self.project is not None and data.get("project") != self.project:
            return False
        if self._name_re is not None and not self._name_re.search(data.get("name") or ""):
            return False
        tags = set(data.get("tags") or ())
        if not set(self.required_tags) <= tags:
            return False
        if self.on_publish and event.kind == "published":
            return True
        if self.on_archive and event.kind == "archived":
            return True
        if self.on_tags:
            added = set(data.get("added") or ()) if event.kind == "tags_changed" else (
                tags if event.kind == "registered" else set())
            if set(self.on_tags) <= tags and added & set(self.on_tags):
                return True
        if not (self.on_publish or self.on_archive or self.on_tags):
            return event.kind == "registered"
        return False


class TriggerScheduler:
    """ClearML's ``TriggerScheduler`` for model triggers, run in this process."""

    def __init__(self, pooling_frequency_minutes: float = 3.0, sync_frequency_minutes: float = 15,
                 force_create_task_name: str | None = None,
                 force_create_task_project: str | None = None, *, store: Any = None,
                 consumer: str | None = None, from_start: bool = False) -> None:
        if pooling_frequency_minutes <= 0:
            raise ValueError("pooling_frequency_minutes must be > 0")
        self.pooling_frequency_minutes = pooling_frequency_minutes
        self.sync_frequency_minutes = sync_frequency_minutes
        self._store = store
        self._consumer = consumer
        self._triggers: list[ModelTrigger] = []
        self._stop = threading.Event()
        self._cursor = ev.start_cursor(self._catalog, consumer, from_start)

    @property
    def _catalog(self):
        if self._store is None:
            from clearml_hooks.models import default_store

            self._store = default_store()
        return self._store.catalog

    def add_model_trigger(self, schedule_task_id: str | None = None,
                          schedule_queue: str | None = None,
                          schedule_function: Callable[[str], Any] | None = None,
                          trigger_project: str | None = None, trigger_name: str | None = None,
                          trigger_on_publish: bool | None = None,
                          trigger_on_tags: Sequence[str] | None = None,
                          trigger_on_archive: bool | None = None,
                          trigger_required_tags: Sequence[str] | None = None,
                          name: str | None = None, target_project: str | None = None,
                          add_tag: bool | str = True, single_instance: bool = False,
                          reuse_task: bool = False, task_parameters: dict | None = None,
                          task_overrides: dict | None = None) -> ModelTrigger:
        """Call ``schedule_function(model_id)`` for models in ``trigger_project`` whose name
        matches ``trigger_name`` (a regex), carrying every ``trigger_required_tags``, when
        published (``trigger_on_publish``), archived (``trigger_on_archive``) or given all of
        ``trigger_on_tags``; with none of the three, when a model is registered."""
        if schedule_queue is not None or schedule_task_id is not None:
            raise ValueError(_NEEDS_SERVER.format(what="schedule_queue / schedule_task_id"))
        if schedule_function is None or not callable(schedule_function):
            raise ValueError("add_model_trigger needs schedule_function= (a callable that "
                             "takes the model id)")
        for what, tags in (("trigger_on_tags", trigger_on_tags),
                           ("trigger_required_tags", trigger_required_tags)):
            if tags is not None and (not isinstance(tags, (list, tuple))
                                     or not all(isinstance(t, str) for t in tags)):
                raise ValueError(f"{what} must be a list of strings: {tags!r}")
        for what, value in (("trigger_project", trigger_project),
                            ("trigger_name", trigger_name)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{what} must be a string: {value!r}")
        if trigger_name:
            try:
                re.compile(trigger_name)
            except re.error as exc:
                raise ValueError(f"trigger_name is not a regular expression: {exc}") from exc
        trigger = ModelTrigger(
            name=name or f"trigger-{len(self._triggers) + 1}",
            schedule_function=schedule_function, project=trigger_project,
            model_name=trigger_name, on_publish=bool(trigger_on_publish),
            on_archive=bool(trigger_on_archive), on_tags=list(trigger_on_tags or ()),
            required_tags=list(trigger_required_tags or ()))
        self._triggers.append(trigger)
        return trigger

    def add_task_trigger(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("add_task_trigger is not supported: task events are in the log, use "
                         "`clearml-hooks watch --on task_completed --exec ...`")

    def add_dataset_trigger(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("add_dataset_trigger needs ClearML Data (not part of clearml-hooks)")

    def get_triggers(self) -> list[ModelTrigger]:
        return list(self._triggers)

    def start_remotely(self, queue: str = "services") -> None:
        raise ValueError(_NEEDS_SERVER.format(what="start_remotely"))

    def stop(self) -> None:
        """Make ``start()`` return (from another thread or a callback)."""
        self._stop.set()

    def start(self) -> None:
        """Run the triggers until ``stop()`` (blocking, as ClearML's ``start``)."""
        catalog = self._catalog
        max_wait = min(1.0, self.pooling_frequency_minutes * 60.0)
        self._stop.clear()
        lock = None
        if self._consumer:  # one scheduler per consumer at a time, or each event fires twice
            from clearml_hooks.watch import ConsumerLock

            lock = ConsumerLock(catalog, self._consumer)
            if not lock.acquire(self._stop, log.warning):
                return
            stored = ev.retrying("read the consumer's cursor", lambda: ev.get_cursor(
                catalog, self._consumer), self._stop)
            self._cursor = max(self._cursor, stored or 0)
        waiter = ev.Waiter(catalog, poll=min(0.2, max_wait), stop=self._stop)
        try:
            while not self._stop.is_set():
                batch = ev.retrying("read the event log", lambda: ev.read_after(
                    catalog, self._cursor), self._stop) or []
                for event in batch:
                    self._fire(event)
                    self._cursor = event.id
                    if self._consumer:
                        ev.retrying(f"store the cursor of consumer {self._consumer!r}",
                                    lambda cursor=event.id: ev.set_cursor(
                                        catalog, self._consumer, cursor), self._stop)
                if len(batch) < 500:
                    waiter.wait(max_wait, after=self._cursor)
        finally:
            waiter.close()
            if lock is not None:
                lock.release()

    def _fire(self, event: ev.Event) -> None:
        for trigger in self._triggers:
            if not trigger.matches(event):
                continue
            trigger.fired += 1
            try:
                trigger.schedule_function(event.model_id)
            except Exception:  # a failing callback is logged; the scheduler keeps running
                log.exception("clearml-hooks: trigger %r failed on model %s", trigger.name,
                              event.model_id)


__all__ = ["ModelTrigger", "TriggerScheduler"]
