"""``clearml-hooks watch``: run a command or POST a signed webhook for registry events.

A watcher follows the catalog's event log (``clearml_hooks.store.events``). With a consumer
name its position is stored in the catalog after every delivery, so a restarted watcher
delivers the events it missed, once each; a new consumer starts at the end of the log unless
``from_start``. Deliveries are in event order. A failing command is logged and skipped; a
webhook is retried with exponential backoff and, after its last try, recorded in the
dead-letter table and skipped.

If a watcher is killed in the middle of a delivery (after the receiver got it, before the
cursor was stored), that one event is delivered again on restart: receivers can drop repeats
by the event id (``X-ClearML-Hooks-Delivery`` / ``CLEARML_HOOKS_EVENT_ID``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clearml_hooks.store import events as ev
from clearml_hooks.store.consumer_lock import ConsumerLock

if TYPE_CHECKING:
    from clearml_hooks.store.catalog import SqlCatalog

SIGNATURE_HEADER = "X-ClearML-Hooks-Signature"
EVENT_HEADER = "X-ClearML-Hooks-Event"
DELIVERY_HEADER = "X-ClearML-Hooks-Delivery"

# --on names -> event kinds
ON_ALIASES = {"publish": "published", "archive": "archived", "unarchive": "unarchived",
              "new-version": "version_ready", "version": "version_ready",
              "version-failed": "version_failed", "register": "registered",
              "new-model": "registered", "metadata": "metadata_changed", "rename": "renamed",
              "remove": "removed", "move": "moved", "task-started": "task_started",
              "task-completed": "task_completed"}


_PLACEHOLDER = re.compile(r"\{(model_id|event|version|name|project|event_id|task_id)\}")


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """For receivers: does the header sign this body with this secret (constant time)?"""
    return bool(header) and hmac.compare_digest(sign(secret, body), header)


@dataclass
class Matcher:
    """Which events a watcher delivers: ``on`` specs (``publish``, ``archive``,
    ``new-version``, ``tag:NAME``, ``any`` or an event kind), a project and a name regex."""

    on: Sequence[str]
    project: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self._kinds: set[str] = set()
        self._tags: set[str] = set()
        self._any = False
        for spec in self.on:
            spec = spec.strip()
            if spec.startswith("tag:"):
                if not spec[4:]:
                    raise ValueError("--on tag:NAME needs a tag name")
                self._tags.add(spec[4:])
            elif spec == "any":
                self._any = True
            elif spec in ON_ALIASES or spec in ev.KINDS or spec.startswith("task_"):
                self._kinds.add(ON_ALIASES.get(spec, spec))
            else:
                raise ValueError(f"unknown --on {spec!r}: use publish, archive, unarchive, "
                                 "new-version, tag:NAME, any, or an event kind ("
                                 + ", ".join(ev.KINDS) + ")")
        if not self.on:
            raise ValueError("give at least one --on")
        self._name_re = re.compile(self.name) if self.name else None

    def matches(self, event: ev.Event) -> bool:
        data = event.data
        if self.project is not None and data.get("project") != self.project:
            return False
        if self._name_re is not None and not self._name_re.search(data.get("name") or ""):
            return False
        if self._any or event.kind in self._kinds:
            return True
        if self._tags:
            if event.kind == "tags_changed":
                return bool(self._tags & set(data.get("added") or ()))
            if event.kind == "registered":
                return bool(self._tags & set(data.get("tags") or ()))
        return False


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, SIGKILL it after 2 s."""
    import signal

    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class DeliveryFailed(RuntimeError):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is a failed delivery: urllib would follow a 301/302/303 as a GET without the
    body, and the receiver's 2xx to that GET counted as delivered an event it never got."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class ExecTarget:
    """Run a shell command per event: ``{model_id}``, ``{event}``, ``{version}``, ``{name}``,
    ``{project}``, ``{event_id}`` are replaced (shell-quoted); the event is in the environment
    too (``CLEARML_HOOKS_EVENT``, ``..._EVENT_ID``, ``..._MODEL_ID``, ``..._MODEL_NAME``,
    ``..._PROJECT``, ``..._VERSION``, ``..._EVENT_JSON``)."""

    def __init__(self, command: str, timeout: float | None = 600.0,
                 echo: Callable[[str], None] = _echo) -> None:
        self.command = command
        self.timeout = timeout
        self.echo = echo
        self.describe = f"exec {command!r}"

    def fields(self, event: ev.Event) -> dict[str, str]:
        d = event.data
        return {"model_id": event.model_id or "", "event": event.kind,
                "version": "" if d.get("version") is None else str(d["version"]),
                "name": d.get("name") or "", "project": d.get("project") or "",
                "event_id": str(event.id), "task_id": event.task_id or ""}

    def deliver(self, event: ev.Event, stop: threading.Event) -> None:
        fields = self.fields(event)
        # only the known {placeholders}: other braces (JSON in the command) stay as written
        cmd = _PLACEHOLDER.sub(lambda m: shlex.quote(fields[m.group(1)]), self.command)
        env = {**os.environ, "CLEARML_HOOKS_EVENT": event.kind,
               "CLEARML_HOOKS_EVENT_ID": fields["event_id"],
               "CLEARML_HOOKS_MODEL_ID": fields["model_id"],
               "CLEARML_HOOKS_MODEL_NAME": fields["name"],
               "CLEARML_HOOKS_PROJECT": fields["project"],
               "CLEARML_HOOKS_VERSION": fields["version"],
               "CLEARML_HOOKS_TASK_ID": fields["task_id"],
               "CLEARML_HOOKS_EVENT_JSON": json.dumps(event.as_dict(), default=str)}
        try:
            # its own process group: a timeout stops the shell and everything it started
            proc = subprocess.Popen(cmd, shell=True, env=env, start_new_session=True)
        except OSError as exc:
            self.echo(f"event {event.id} {event.kind}: command could not start: {exc}")
            return
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            self.echo(f"event {event.id} {event.kind}: command timed out after "
                      f"{self.timeout:g} s and was stopped: {cmd}")
            return
        except BaseException:  # the watcher is interrupted: do not leave the command behind
            _kill_group(proc)
            raise
        if proc.returncode != 0:
            self.echo(f"event {event.id} {event.kind}: command exited with status "
                      f"{proc.returncode}: {cmd}")
        else:
            self.echo(f"event {event.id} {event.kind} model {event.model_id}: command ok")


class WebhookTarget:
    """POST the event as JSON, signed with ``HMAC-SHA256(secret, body)`` when a secret is
    given; any 2xx is delivered; otherwise retried ``tries`` times in all, waiting
    ``backoff``, 2x, 4x ... (at most ``max_backoff``), then a dead letter."""

    def __init__(self, url: str, secret: str | None = None, *, tries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 60.0, timeout: float = 10.0,
                 catalog: SqlCatalog | None = None, consumer: str | None = None,
                 echo: Callable[[str], None] = _echo) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--webhook needs an http:// or https:// URL, got {url!r}")
        self.url, self.secret = url, secret
        self.tries, self.backoff, self.max_backoff = max(1, tries), backoff, max_backoff
        self.timeout = timeout
        self.catalog, self.consumer = catalog, consumer
        self.echo = echo
        self.describe = f"webhook {url}"

    def body(self, event: ev.Event) -> bytes:
        return json.dumps(event.as_dict(), default=str, sort_keys=True).encode()

    def post(self, event: ev.Event, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "clearml-hooks",
                   EVENT_HEADER: event.kind, DELIVERY_HEADER: str(event.id)}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            # the status line decides; the answer's body is not read (a receiver sending an
            # endless or gigantic body would hold the watcher, or fill its memory, forever)
            with _OPENER.open(req, timeout=self.timeout):
                pass
        except urllib.error.HTTPError as exc:
            hint = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
            raise DeliveryFailed(f"HTTP {exc.code}{hint}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryFailed(str(getattr(exc, "reason", exc))) from exc

    def deliver(self, event: ev.Event, stop: threading.Event) -> None:
        body = self.body(event)
        delay = self.backoff
        error = ""
        for attempt in range(1, self.tries + 1):
            try:
                self.post(event, body)
                self.echo(f"event {event.id} {event.kind} model {event.model_id}: delivered "
                          f"(try {attempt})")
                return
            except DeliveryFailed as exc:
                error = str(exc)
                self.echo(f"event {event.id} {event.kind}: try {attempt}/{self.tries} "
                          f"failed: {error}")
            if attempt < self.tries:
                if stop.wait(min(delay, self.max_backoff)):
                    raise InterruptedError("stopped while retrying")  # not acknowledged
                delay *= 2
        self.echo(f"event {event.id} {event.kind}: giving up after {self.tries} tries; "
                  "recorded as a dead letter")
        if self.catalog is not None:
            ev.add_dead_letter(self.catalog, self.consumer or "", event, self.url,
                               self.tries, error, body.decode())


class Watcher:
    """Follow the event log and hand matching events to ``target`` in order."""

    def __init__(self, catalog: SqlCatalog, matcher: Matcher, target: Any, *,
                 consumer: str | None = None, from_start: bool = False, poll: float = 0.2,
                 max_wait: float = 1.0, echo: Callable[[str], None] = _echo) -> None:
        self.catalog = catalog
        self.matcher = matcher
        self.target = target
        self.consumer = consumer
        self.poll, self.max_wait = poll, max_wait
        self.stop_event = threading.Event()
        self.echo = echo
        self.cursor = ev.start_cursor(catalog, consumer, from_start)

    def stop(self) -> None:
        self.stop_event.set()

    def _save(self, cursor: int) -> None:
        if self.consumer:
            ev.retrying(f"store the cursor of consumer {self.consumer!r}",
                        lambda: ev.set_cursor(self.catalog, self.consumer, cursor),
                        self.stop_event)

    def run(self) -> None:
        """Block until ``stop()``; the cursor is stored after every delivered event."""
        lock = ConsumerLock(self.catalog, self.consumer) if self.consumer else None
        if lock is not None:
            if not lock.acquire(self.stop_event, self.echo):
                return
            # another watcher may have run this consumer since we read its cursor
            stored = ev.retrying("read the consumer's cursor", lambda: ev.get_cursor(
                self.catalog, self.consumer), self.stop_event)
            self.cursor = max(self.cursor, stored or 0)
        waiter = ev.Waiter(self.catalog, poll=self.poll, stop=self.stop_event)
        saved = self.cursor
        try:
            while not self.stop_event.is_set():
                batch = ev.retrying("read the event log", lambda: ev.read_after(
                    self.catalog, self.cursor), self.stop_event) or []
                for event in batch:
                    if self.stop_event.is_set():
                        break
                    if self.matcher.matches(event):
                        try:
                            self.target.deliver(event, self.stop_event)
                        except InterruptedError:
                            return
                        self.cursor = event.id
                        self._save(self.cursor)
                        saved = self.cursor
                    else:
                        self.cursor = event.id
                if self.cursor != saved:  # skipped events: store the position once per batch
                    self._save(self.cursor)
                    saved = self.cursor
                if len(batch) < 500:
                    waiter.wait(self.max_wait, after=self.cursor)
        finally:
            waiter.close()
            if lock is not None:
                lock.release()
