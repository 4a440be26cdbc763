"""Registry events: the log, watchers (real processes, killed and restarted), signed webhooks
to a real local HTTP receiver, TriggerScheduler, and PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from clearml_hooks.store import events as ev
from clearml_hooks.store import model_ops
from clearml_hooks.store.catalog import SqlCatalog
from clearml_hooks.watch import SIGNATURE_HEADER, verify
from tests.eventutil import LocalHTTPServer, Proc, QuietHandler, wait_for


def _model(catalog, name="m", project="p", **kw):
    return model_ops.create_model(catalog, name=name, project=project, **kw)


def test_changes_append_events_in_their_transaction(catalog):
    a = _model(catalog, "alpha", tags=["x"])
    model_ops.edit_tags(catalog, a, add=["prod"], remove=["x"])
    model_ops.edit_tags(catalog, a, add=["prod"])  # no change: no event
    model_ops.set_metadata(catalog, a, {"k": ("1", "int")}, replace=False)
    model_ops.update_fields(catalog, a, name="beta")
    model_ops.set_project(catalog, a, "p2")
    model_ops.set_project(catalog, a, "p2")  # same project: no event
    model_ops.publish(catalog, a)
    model_ops.publish(catalog, a)  # already published: no event
    model_ops.set_archived(catalog, a, True)
    model_ops.set_archived(catalog, a, False)
    model_ops.remove(catalog, a)
    with pytest.raises(model_ops.UnknownModel):
        model_ops.publish(catalog, a)
    log = ev.read_after(catalog, 0)
    assert [e.kind for e in log] == ["registered", "tags_changed", "metadata_changed",
                                     "renamed", "moved", "published", "archived",
                                     "unarchived", "removed"]
    assert [e.id for e in log] == sorted(e.id for e in log)
    assert log[0].data["tags"] == ["x"] and log[0].data["project"] == "p"
    assert log[1].data["added"] == ["prod"] and log[1].data["removed"] == ["x"]
    assert log[3].data["old_name"] == "alpha" and log[3].data["name"] == "beta"
    assert log[4].data["old_project"] == "p" and log[4].data["project"] == "p2"
    assert log[-1].data["name"] == "beta"  # the removed model's fields, from before
    # a transaction that fails after emitting leaves no event
    b = _model(catalog, "gamma")
    before = ev.last_id(catalog)
    with pytest.raises(RuntimeError):
        with catalog.write() as conn:
            ev.emit(conn, "published", model_id=b)
            raise RuntimeError("rolled back")
    assert ev.last_id(catalog) == before


def test_captured_versions_and_tasks_emit_events(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "home"))
    from clearml_hooks import OutputModel, Task
    from clearml_hooks.models import default_store

    task = Task.init(project_name="evp", task_name="t", auto_connect_frameworks=False)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w" * 64)
    om = OutputModel(task=task, name="net")
    om.update_weights(str(weights), async_enable=False)
    task.close()
    log = ev.read_after(default_store().catalog, 0)
    kinds = [e.kind for e in log]
    assert kinds == ["task_started", "registered", "version_ready", "task_completed"]
    assert log[2].data["version"] == 1 and log[2].model_id == om.id


def _watch(*args, env=None):
    return Proc("watch", *args, env=env)


def test_watch_exec_consumer_killed_and_restarted_delivers_each_once(catalog, tmp_path):
    out = tmp_path / "out.txt"
    # a failing command (model "bad") is logged and does not stop the watcher
    cmd = (f'test "$CLEARML_HOOKS_MODEL_NAME" != bad || exit 3; '
           f'echo "{{model_id}} {{event}} {{version}} $CLEARML_HOOKS_EVENT_ID" >> {out}')
    args = ["--on", "publish", "--on", "tag:prod", "--project", "p", "--name", "^(a|b|c|d|bad)$",
            "--consumer", "ci", "--exec", cmd]
    old = _model(catalog, "a")
    model_ops.publish(catalog, old)  # before the consumer exists: not delivered
    w = _watch(*args)
    try:
        w.wait_line("clearml-hooks watch as consumer 'ci'")
        a = _model(catalog, "a")
        model_ops.publish(catalog, a)
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 1)
        # killed once its cursor is stored (a kill between a delivery and the store of the
        # cursor repeats that one event: the documented window)
        published_id = ev.last_id(catalog)
        wait_for(lambda: ev.get_cursor(catalog, "ci") == published_id)
        w.stop(signal.SIGKILL)
        # while the watcher is down
        b, c, bad = _model(catalog, "b"), _model(catalog, "c"), _model(catalog, "bad")
        model_ops.publish(catalog, b)
        model_ops.edit_tags(catalog, c, add=["prod"])
        model_ops.publish(catalog, bad)
        _model(catalog, "zzz", tags=["prod"])  # name does not match
        model_ops.publish(catalog, _model(catalog, "d", project="other"))  # other project
        w = _watch(*args)
        w.wait_line("command exited with status 3")
        d = _model(catalog, "d")
        model_ops.edit_tags(catalog, d, add=["prod"])
        wait_for(lambda: len(out.read_text().splitlines()) == 4)
        time.sleep(0.5)
    finally:
        w.stop()
    lines = out.read_text().splitlines()
    assert [ln.split()[:2] for ln in lines] == [[a, "published"], [b, "published"],
                                                [c, "tags_changed"], [d, "tags_changed"]]
    assert len({ln.split()[3] for ln in lines}) == 4  # distinct event ids
    assert ev.get_cursor(catalog, "ci") == ev.last_id(catalog)
    # a restart with nothing new delivers nothing again; a new consumer starts at the end
    w = _watch(*args)
    try:
        w.wait_line("clearml-hooks watch as consumer 'ci'")
        time.sleep(0.6)
    finally:
        w.stop()
    assert len(out.read_text().splitlines()) == 4


class _Receiver:
    """A real local HTTP server that checks signatures and fails on request."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict] = []
        self.bad_signatures = 0
        self.fail_next = 0
        self.always_fail_model: str | None = None
        self.lock = threading.Lock()
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    if not verify(receiver.secret, body, self.headers.get(SIGNATURE_HEADER)):
                        receiver.bad_signatures += 1
                        status = 401
                    else:
                        event = json.loads(body)
                        event["_delivery"] = self.headers.get("X-ClearML-Hooks-Delivery")
                        if receiver.fail_next > 0:
                            receiver.fail_next -= 1
                            status = 503
                        elif event["model_id"] == receiver.always_fail_model:
                            status = 500
                        else:
                            receiver.received.append(event)
                            status = 204
                self.send_response(status)
                self.end_headers()

        self.http = LocalHTTPServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


def test_webhook_signed_retried_and_dead_lettered(catalog):
    receiver = _Receiver("s3cret")
    w = None
    try:
        w = _watch("--on", "publish", "--webhook", receiver.url, "--secret", "s3cret",
                   "--tries", "3", "--backoff", "0.05", "--consumer", "hooks")
        w.wait_line("clearml-hooks watch as consumer 'hooks'")
        receiver.fail_next = 2  # the first event succeeds on its third try
        a = _model(catalog, "a")
        model_ops.publish(catalog, a)
        wait_for(lambda: len(receiver.received) == 1)
        b, c = _model(catalog, "b"), _model(catalog, "c")
        receiver.always_fail_model = b  # b gives up after 3 tries: a dead letter
        model_ops.publish(catalog, b)
        model_ops.publish(catalog, c)
        wait_for(lambda: len(receiver.received) == 2)
        w.wait_line("giving up after 3 tries")
    finally:
        if w is not None:
            w.stop()
        receiver.close()
    assert [e["model_id"] for e in receiver.received] == [a, c]
    assert all(e["event"] == "published" and e["project"] == "p" for e in receiver.received)
    assert receiver.received[0]["_delivery"] == str(receiver.received[0]["id"])
    assert receiver.bad_signatures == 0
    dead = ev.dead_letters(catalog, "hooks")
    assert len(dead) == 1 and dead[0]["attempts"] == 3 and "HTTP 500" in dead[0]["error"]
    assert json.loads(dead[0]["body"])["model_id"] == b
    # a wrong secret is refused by the receiver (the signature covers the body)
    assert not verify("other", b"{}", "sha256=" + "0" * 64)


def test_trigger_scheduler_calls_schedule_function(catalog, monkeypatch):
    from clearml_hooks.automation import TriggerScheduler
    from clearml_hooks.config import Settings
    from clearml_hooks.store import Store

    store = Store(Settings.resolve())
    calls: dict[str, list[str]] = {"pub": [], "tags": [], "arch": [], "new": []}
    sched = TriggerScheduler(pooling_frequency_minutes=0.01, store=store)
    sched.add_model_trigger(schedule_function=calls["pub"].append, trigger_project="p",
                            trigger_on_publish=True, trigger_required_tags=["ok"], name="pub")
    sched.add_model_trigger(schedule_function=calls["tags"].append, trigger_name="^det",
                            trigger_on_tags=["prod", "eu"])
    sched.add_model_trigger(schedule_function=calls["arch"].append, trigger_on_archive=True)
    sched.add_model_trigger(schedule_function=calls["new"].append, trigger_project="p")
    with pytest.raises(ValueError, match="ClearML server"):
        sched.add_model_trigger(schedule_queue="default", schedule_task_id="abc")
    with pytest.raises(ValueError, match="ClearML server"):
        sched.start_remotely()
    thread = threading.Thread(target=sched.start, daemon=True)
    thread.start()
    try:
        a = _model(catalog, "a", tags=["ok"])
        model_ops.publish(catalog, a)
        no_tag = _model(catalog, "n")
        model_ops.publish(catalog, no_tag)  # lacks the required tag
        det = _model(catalog, "detector", project="q")
        model_ops.edit_tags(catalog, det, add=["prod"])  # not all of prod, eu yet
        model_ops.edit_tags(catalog, det, add=["eu"])
        model_ops.set_archived(catalog, det, True)
        wait_for(lambda: calls["arch"], timeout=10)
        time.sleep(0.3)
    finally:
        sched.stop()
        thread.join(timeout=5)
        store.catalog.close()
    assert not thread.is_alive()
    assert calls == {"pub": [a], "tags": [det], "arch": [det], "new": [a, no_tag]}


def test_postgres_listen_notify_wakes_consumers(pg_server, tmp_path, monkeypatch):
    import uuid

    import psycopg

    from clearml_hooks.automation import TriggerScheduler
    from clearml_hooks.config import Settings
    from clearml_hooks.store import Store

    name = "ev" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_server.url.rsplit("/", 1)[0] + "/" + name
    monkeypatch.setenv("CLEARML_HOOKS_CATALOG_URL", url)
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "pghome"))
    store = Store(Settings.resolve())
    catalog = store.catalog
    writer = SqlCatalog(url)
    try:
        # a Waiter blocks on LISTEN and wakes at the commit, long before its timeout
        waiter = ev.Waiter(catalog)
        waiter.wait(0.1)  # connects and LISTENs
        woke: list[float] = []
        t = threading.Thread(target=lambda: (waiter.wait(20.0), woke.append(time.monotonic())))
        t.start()
        time.sleep(0.3)
        started = time.monotonic()
        model_ops.create_model(writer, name="m", project="p")
        t.join(timeout=25)
        waiter.close()
        assert woke and woke[0] - started < 1.0
        # a transaction holding a smaller id that commits later is never skipped: readers stop
        # below any open writer
        cursor = ev.last_id(catalog)
        with writer.write() as conn:
            small = ev.emit(conn, "metadata_changed", model_id=None)
            later = model_ops.create_model(writer, name="later", project="p")  # commits first
            assert ev.read_after(catalog, cursor) == []
        got = ev.read_after(catalog, cursor)
        assert [e.id for e in got][0] == small and got[-1].model_id == later
        # a scheduler fed by NOTIFY, under concurrent writers
        seen: list[str] = []
        sched = TriggerScheduler(pooling_frequency_minutes=5, store=store)
        sched.add_model_trigger(schedule_function=seen.append, trigger_on_publish=True)
        thread = threading.Thread(target=sched.start, daemon=True)
        thread.start()
        ids = [model_ops.create_model(writer, name=f"m{i}", project="p") for i in range(6)]
        workers = [threading.Thread(target=model_ops.publish, args=(writer, i)) for i in ids]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wait_for(lambda: len(seen) == 6, timeout=10)
        sched.stop()
        thread.join(timeout=5)
        assert sorted(seen) == sorted(ids)
        log = ev.read_after(catalog, 0)
        assert [e.id for e in log] == sorted(e.id for e in log)
        assert len([e for e in log if e.kind == "published"]) == 6
    finally:
        writer.close()
        catalog.close()
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
