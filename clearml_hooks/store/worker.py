"""The background side of capture: this process's worker thread over its journal.

``Worker`` runs the ``Processor`` in a background thread in journal order: a catalog or object
store that is down, slow or full makes it wait and retry (the records stay in the journal), a
job that hangs is abandoned after its timeout so one bad job never blocks the others, and
nothing here ever runs in the training thread. ``recover`` (store/recovery.py) finishes the
journals of processes that died.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clearml_hooks.hooks import contract
from clearml_hooks.store import forks
from clearml_hooks.store.journal import Record
from clearml_hooks.store.processor import Processor, is_transient
from clearml_hooks.store.recovery import fail_loudly, recover

if TYPE_CHECKING:
    from clearml_hooks.store import Store
    from clearml_hooks.store.journal import Journal

__all__ = ["Worker", "RecoverJob", "recover"]

log = logging.getLogger("clearml_hooks")

MAX_BACKOFF = 30.0
QUIET = 0.05  # a burst of saves is gathered until it pauses this long ...
MAX_GATHER = 1.0  # ... or for at most this long
MAX_BATCH = 256
PERMANENT_ATTEMPTS = 3


WORKER_NICE = 10


def _lower_priority() -> None:
    """Linux schedules threads on their own: a niced worker yields the CPU to training when
    both want it (hashing a large checkpoint would otherwise take a core from it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except (AttributeError, OSError):
        pass


class RecoverJob:
    """Queued once per process when the worker starts: finish dead processes' journals (so
    ``flush`` waits for them too, as a run that follows a crash expects)."""

    rid = "recover"
    header: dict[str, Any] = {"t": "recover"}


class Worker:
    """This process's background worker over its journal. Started on the first record."""

    def __init__(self, store: Store, journal: Journal) -> None:
        self.store = store
        self.journal = journal
        self.processor = Processor(store, journal.name)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # put is one C call
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._current: tuple[Record, float, int] | None = None
        self._waiters: dict[str, threading.Event] = {}
        self._outcomes: dict[str, str] = {}
        self._listeners: list[Callable[[Record, str], None]] = []
        self._warned = False
        self._recovery_queued = False
        self._pid = os.getpid()
        self.job_timeout = 600.0
        self.waiting_since: float | None = None  # set while a service is unreachable
        self.last_error: str | None = None

    def add_listener(self, fn: Callable[[Record, str], None]) -> None:
        """Call ``fn(record, outcome)`` as each record is resolved (once per function)."""
        if fn not in self._listeners:
            self._listeners.append(fn)

    def _check_fork(self) -> None:
        if self._pid != forks.PID:  # a forked child has none of the parent's threads
            self._queue = queue.SimpleQueue()
            self._lock = threading.Lock()
            self._idle = threading.Condition(self._lock)
            self._outstanding = 0
            self._thread = None
            self._current = None
            self._waiters = {}
            self._recovery_queued = False
            self._pid = os.getpid()

    def submit(self, record: Record, *, start: bool = True) -> None:
        """Queue a journaled record; ``start=False`` leaves starting the thread to a later
        record, ``start()`` or the exit (a run that saves nothing never opens the catalog)."""
        if self._pid != forks.PID:
            self._check_fork()
        with self._lock:
            self._outstanding += 1
            if start and (self._thread is None or not self._recovery_queued):
                self._start_locked()
        self._queue.put(record)

    def start(self) -> None:
        """Start the thread now (e.g. to ingest the task record of a run that saves nothing)."""
        self._check_fork()
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if not self._recovery_queued:
            self._recovery_queued = True
            self._outstanding += 1
            self._queue.put(RecoverJob())
        if self._thread is None:  # none yet, or it ended (_run clears it)
            self._generation += 1
            thread = threading.Thread(target=self._run, args=(self._generation,),
                                      name="clearml-hooks-worker", daemon=True)
            thread.start()  # kept only once started: a failed start is tried again next time
            self._thread = thread
            threading.Thread(target=self._watch, args=(self._generation,),
                             name="clearml-hooks-watchdog", daemon=True).start()

    def event_for(self, rid: str) -> threading.Event:
        with self._lock:
            event = self._waiters.get(rid)
            if event is None:
                event = self._waiters[rid] = threading.Event()
                if rid in self._outcomes:
                    event.set()
            return event

    def outcome(self, rid: str) -> str | None:
        return self._outcomes.get(rid)

    def outstanding(self) -> int:
        self._check_fork()
        with self._lock:
            return self._outstanding

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted record is resolved (or given up on); False on timeout."""
        self._check_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._outstanding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- the thread -----------------------------------------------------------------------------

    def _next_batch(self) -> list:
        """The next record, plus those that follow it closely: a burst of saves is taken in
        one go once it pauses (``QUIET`` s), so the worker does not interleave with it.

        While gathering, the thread sleeps and then takes what arrived, instead of waiting on
        the queue: a waiting thread would be woken by every save of the burst and take the GIL
        from the training thread each time; this way it wakes once per ``QUIET``.
        """
        batch = [self._queue.get()]
        if isinstance(batch[0], RecoverJob):
            return batch
        deadline = time.monotonic() + MAX_GATHER
        while len(batch) < MAX_BATCH and time.monotonic() < deadline:
            time.sleep(QUIET)
            arrived, recovery = self._take_arrived(MAX_BATCH - len(batch))
            batch.extend(arrived)
            if recovery or not arrived:
                break
        return batch

    def _take_arrived(self, limit: int) -> tuple[list, bool]:
        """Records queued so far (at most ``limit``), and whether a recovery job was among
        them (it goes back to the queue, to run after this batch)."""
        arrived: list = []
        recovery = False
        while len(arrived) < limit:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(record, RecoverJob):
                self._queue.put(record)
                recovery = True
                break
            arrived.append(record)
        return arrived, recovery

    def _run(self, generation: int) -> None:
        try:
            self._loop(generation)
        finally:  # ended (an error escaped): the next submit starts a new thread
            with self._lock:
                if generation == self._generation:
                    self._thread = None

    def _loop(self, generation: int) -> None:
        _lower_priority()
        try:
            self.store.import_worker_modules()
        except Exception:
            pass  # an import that fails is reported where it is used
        while True:
            batch = self._next_batch()
            if generation != self._generation:
                for record in batch:  # abandoned: the newer thread takes them
                    self._queue.put(record)
                return
            self._current = (batch, time.monotonic(), generation)
            outcomes = self._process_with_retries(batch, generation)
            self._current = None
            if generation != self._generation:
                return  # the watchdog gave up on us and already counted these records
            for record in batch:
                self._resolved(record, outcomes.get(record.rid))

    def _process_with_retries(self, batch: list, generation: int) -> dict[str, str]:
        delay = 1.0
        failures = 0
        while True:
            try:
                if isinstance(batch[0], RecoverJob):
                    recover(self.store, own=self.journal.name)
                    return {RecoverJob.rid: "done"}
                outcomes = self.processor.process_batch(batch)
                self.waiting_since = None
                return outcomes
            except Exception as exc:
                if generation != self._generation:
                    return {}
                if is_transient(exc):
                    self._warn_waiting(exc)
                    time.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                    if self._current is not None:  # the wait is not the job hanging
                        self._current = (batch, time.monotonic(), generation)
                    continue
                if isinstance(batch[0], RecoverJob):
                    return {}
                if len(batch) > 1:  # find the record that fails, one at a time
                    outcomes = {}
                    for record in batch:
                        outcomes.update(self._process_with_retries([record], generation))
                    return outcomes
                failures += 1
                if failures < PERMANENT_ATTEMPTS:
                    time.sleep(0.2 * failures)
                    continue
                return {batch[0].rid: self._give_up(batch[0], exc)}

    def _give_up(self, record: Record, exc: BaseException) -> str:
        """A record that fails for a reason of its own: fail its snapshot loudly, move on."""
        reason = f"{type(exc).__name__}: {exc}"
        try:
            raise exc
        except Exception:
            try:
                contract.agent_error(f"processing a journaled {record.header.get('t')} record")
            except Exception:
                pass
        if record.header.get("t") == "snap" and not fail_loudly(
                self.store, record, self.journal.name, reason):
            return "error"  # stays journaled: the next process tries again
        return "failed"

    def _warn_waiting(self, exc: BaseException) -> None:
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self._warned:
            self._warned = True
            log.warning("clearml-hooks: the model store is unreachable (%s); captured snapshots "
                        "wait in the local journal and are stored when it is back (or by the "
                        "next run, or `clearml-hooks sync`). Training is not affected.",
                        self.last_error[:300])

    def _resolved(self, record: Record, outcome: str | None) -> None:
        if isinstance(record, RecoverJob):
            with self._lock:
                self._outstanding -= 1
                if self._outstanding == 0:
                    self._idle.notify_all()
            return
        if outcome is not None and outcome != "error":
            try:
                self.journal.mark_done(record.rid)
            except Exception:
                pass
        for fn in self._listeners:
            try:
                fn(record, outcome or "error")
            except Exception:
                pass
        with self._lock:
            self._outcomes[record.rid] = outcome or "error"
            if len(self._outcomes) > 10000:  # waiters ask right after submitting: keep recent
                for rid in list(self._outcomes)[:5000]:
                    del self._outcomes[rid]
            event = self._waiters.pop(record.rid, None)
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.notify_all()
        if event is not None:
            event.set()

    def _watch(self, generation: int) -> None:
        """Abandon a job that hangs (a frozen server), so the records behind it go on."""
        while generation == self._generation:
            time.sleep(1.0)
            current = self._current
            if current is None or current[2] != generation:
                continue
            batch, started, _ = current
            size = sum(f.get("size", 0) for record in batch
                       for f in record.header.get("files") or [])
            limit = self.job_timeout + size / (20 << 20)
            if time.monotonic() - started > limit:
                log.warning("clearml-hooks: storing %d journaled record(s) took over %.0f s; "
                            "leaving them in the journal for the next run and going on with "
                            "the others", len(batch), limit)
                with self._lock:
                    self._generation += 1
                    self._thread = None
                    self._current = None
                for record in batch:
                    self._resolved(record, "error")
                self.start()
                return
