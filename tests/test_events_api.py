"""Registry events, the parts test_events.py leaves out: ClearML's exact add_model_trigger
signature and errors, pooling_frequency_minutes as an upper bound on SQLite (callbacks within a
second, start() blocking), and the event kinds that come from capture and sync: an imported
model, a version that failed, a task that failed."""

from __future__ import annotations

import inspect
import io
import statistics
import textwrap
import threading
import time

import pytest

from clearml_hooks.store import events as ev
from clearml_hooks.store import model_ops
from clearml_hooks.store.catalog import SqlCatalog
from tests.conftest import run_script
from tests.eventutil import Proc, wait_for

# clearml.automation.TriggerScheduler.add_model_trigger, in ClearML's order
CLEARML_ADD_MODEL_TRIGGER = [
    "schedule_task_id", "schedule_queue", "schedule_function", "trigger_project", "trigger_name",
    "trigger_on_publish", "trigger_on_tags", "trigger_on_archive", "trigger_required_tags",
    "name", "target_project", "add_tag", "single_instance", "reuse_task", "task_parameters",
    "task_overrides"]
CLEARML_INIT = ["pooling_frequency_minutes", "sync_frequency_minutes", "force_create_task_name",
                "force_create_task_project"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "store"))
    from clearml_hooks.config import Settings
    from clearml_hooks.store import Store

    st = Store(Settings.resolve())
    yield st
    st.catalog.close()


def test_add_model_trigger_has_clearmls_signature_and_errors(store):
    from clearml_hooks.automation import TriggerScheduler

    params = list(inspect.signature(TriggerScheduler.add_model_trigger).parameters)[1:]
    assert params == CLEARML_ADD_MODEL_TRIGGER
    assert list(inspect.signature(TriggerScheduler).parameters)[:4] == CLEARML_INIT
    assert inspect.signature(TriggerScheduler).parameters["pooling_frequency_minutes"].default == 3
    sched = TriggerScheduler(store=store)
    # each argument that needs a ClearML server says so, alone or together
    for kwargs in ({"schedule_queue": "default", "schedule_function": print},
                   {"schedule_task_id": "abc"},
                   {"schedule_task_id": "abc", "schedule_queue": "default"}):
        with pytest.raises(ValueError, match="needs a ClearML server"):
            sched.add_model_trigger(**kwargs)
    with pytest.raises(ValueError, match="needs a ClearML server"):
        sched.start_remotely(queue="services")
    with pytest.raises(ValueError, match="schedule_function"):
        sched.add_model_trigger(trigger_on_publish=True)
    # ClearML's verify(): tags are a list of strings (a bare "prod" is not four tags)
    with pytest.raises(ValueError, match="trigger_on_tags must be a list of strings"):
        sched.add_model_trigger(schedule_function=print, trigger_on_tags="prod")
    with pytest.raises(ValueError, match="trigger_required_tags"):
        sched.add_model_trigger(schedule_function=print, trigger_required_tags=[1])
    with pytest.raises(ValueError, match="regular expression"):
        sched.add_model_trigger(schedule_function=print, trigger_name="(")
    with pytest.raises(TypeError):  # a misspelt argument is an error, not silently ignored
        sched.add_model_trigger(schedule_function=print, trigger_on_tag=["prod"])
    # positional use as in ClearML: (schedule_task_id, schedule_queue, schedule_function, ...)
    trigger = sched.add_model_trigger(None, None, print, "proj", "^det", True)
    assert (trigger.schedule_function, trigger.project, trigger.model_name,
            trigger.on_publish) == (print, "proj", "^det", True)
    assert sched.get_triggers() == [trigger]


def test_trigger_scheduler_on_sqlite_calls_back_within_a_second(store):
    """pooling_frequency_minutes=3 (ClearML's default) is only an upper bound: on SQLite the
    scheduler polls the log at most 1 s apart, so callbacks come well within a second; start()
    blocks until stop()."""
    from clearml_hooks.automation import TriggerScheduler

    catalog = store.catalog
    called: dict[str, float] = {}
    sched = TriggerScheduler(store=store)  # pooling_frequency_minutes=3
    assert sched.pooling_frequency_minutes == 3
    sched.add_model_trigger(schedule_function=lambda mid: called.setdefault(mid, time.monotonic()),
                            trigger_on_publish=True)
    thread = threading.Thread(target=sched.start, daemon=True)
    thread.start()
    writer = SqlCatalog(catalog.engine.url.render_as_string(hide_password=False))
    latencies = []
    try:
        time.sleep(0.3)
        assert thread.is_alive()  # start() blocks
        for i in range(5):
            mid = model_ops.create_model(writer, name=f"m{i}", project="p")
            started = time.monotonic()
            model_ops.publish(writer, mid)
            wait_for(lambda mid=mid: mid in called, timeout=10, interval=0.01)
            latencies.append(called[mid] - started)
            time.sleep(0.13 * i)  # publish at different phases of the poll
        assert thread.is_alive()
    finally:
        sched.stop()
        thread.join(timeout=5)
        writer.close()
    assert not thread.is_alive()  # stop() makes start() return
    assert max(latencies) < 1.0, latencies
    assert statistics.median(latencies) < 0.5, latencies
    # a poll interval is never longer than 1 s, whatever is asked
    assert ev.Waiter(catalog, poll=60).poll == 1.0


def test_imported_model_and_failed_version_and_failed_task_are_events(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    store_dir = tmp_path / "store"
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(store_dir))
    # a file that no snapshot wrote, loaded by a task: an imported model
    weights = tmp_path / "pretrained.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    weights.write_bytes(buf.getvalue())
    from clearml_hooks import Task
    from clearml_hooks.models import default_store

    task = Task.init(project_name="imp", task_name="t", auto_connect_frameworks={"pytorch": True})
    torch.load(str(weights))
    task.close()
    catalog = default_store().catalog
    log = ev.read_after(catalog, 0)
    imported = [e for e in log if e.kind == "registered"]
    assert len(imported) == 1 and imported[0].data["origin"] == "imported"
    assert imported[0].data["project"] == "imp" and imported[0].data["version"] == 1
    cursor = log[-1].id
    # a version whose file was rewritten in place before it was stored: version_failed, from
    # the process that finds it (here `clearml-hooks sync`), after the model's registration
    final = tmp_path / "final.bin"
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(f"""
        from clearml_hooks import Task, OutputModel
        task = Task.init(project_name="p", task_name="t", output_uri={str(store_dir)!r})
        open({str(final)!r}, "wb").write(b"a" * 200_000)
        OutputModel(name="gamma").update_weights({str(final)!r})
        raise RuntimeError("training crashed")
    """))
    out = run_script(script, env={"CLEARML_HOOKS_OFFLINE": "1"})
    assert out.returncode == 1, out.stderr
    with open(final, "r+b") as f:
        f.write(b"b" * 200_000)
    sync = Proc("sync")
    assert sync.proc.wait(timeout=120) == 0, sync.lines
    sync.stop()
    kinds = [(e.kind, e.data.get("name")) for e in ev.read_after(catalog, cursor)]
    assert ("registered", "gamma") in kinds and ("version_failed", "gamma") in kinds
    assert kinds.index(("registered", "gamma")) < kinds.index(("version_failed", "gamma"))
    failed = next(e for e in ev.read_after(catalog, cursor) if e.kind == "version_failed")
    assert failed.data["version"] == 1 and "rewritten in place" in failed.data["error"]
    assert [k for k, _ in kinds if k.startswith("task_")] == ["task_started", "task_failed"]


def test_registering_weights_by_uri_is_a_new_version_event(tmp_path, monkeypatch):
    """update_weights(register_uri=...) points a model at new weights without storing bytes:
    watchers of new versions (and serve) hear of it as version_ready, with the URI."""
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "store"))
    from clearml_hooks import OutputModel, Task
    from clearml_hooks.models import default_store

    task = Task.init(project_name="uri", task_name="t", auto_connect_frameworks=False)
    om = OutputModel(task=task, name="remote")
    url = om.update_weights(register_uri="s3://bucket/models/remote.pt")
    task.close()
    log = ev.read_after(default_store().catalog, 0)
    ready = [e for e in log if e.kind == "version_ready"]
    assert [(e.model_id, e.data["uri"], e.data.get("version")) for e in ready] == \
        [(om.id, url, None)]
    assert ready[0].data["registered_uri"] is True and ready[0].data["name"] == "remote"


def test_postgres_waiter_survives_a_dropped_listen_connection(pg_server, tmp_path, caplog):
    """The LISTEN connection is killed server-side: the waiter says so, polls (so no event
    waits), and LISTENs again on a new connection, which NOTIFY wakes as before."""
    import uuid

    import psycopg

    name = "ew" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_server.url.rsplit("/", 1)[0] + "/" + name
    catalog, writer = SqlCatalog(url), SqlCatalog(url)
    waiter = ev.Waiter(catalog, poll=0.05)
    try:
        waiter.wait(0.1)  # connects and LISTENs
        first = waiter._listen
        assert first is not None
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first.info.backend_pid,))
        cursor = ev.last_id(catalog)
        threading.Timer(0.3, model_ops.create_model, (writer,),
                        {"name": "a", "project": "p"}).start()
        started = time.monotonic()
        while ev.last_id(catalog) <= cursor:  # as consumers do: wait, read, wait again
            waiter.wait(20.0, after=cursor)  # the lost connection is seen; polling goes on
            assert time.monotonic() - started < 2.0
        assert "LISTEN connection lost" in caplog.text
        waiter.wait(0.1)  # LISTENs again
        assert waiter._listen is not None and waiter._listen is not first
        cursor = ev.last_id(catalog)
        threading.Timer(0.3, model_ops.create_model, (writer,),
                        {"name": "b", "project": "p"}).start()
        started = time.monotonic()
        waiter.wait(20.0)  # no `after`: only a NOTIFY ends this wait early
        assert time.monotonic() - started < 2.0
        wait_for(lambda: ev.last_id(catalog) > cursor, timeout=5)
    finally:
        waiter.close()
        writer.close()
        catalog.close()
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_trigger_scheduler_consumer_resumes_where_it_stopped(store):
    """TriggerScheduler(consumer=...) keeps a durable cursor as watch does: a scheduler started
    again calls back once for each change made while it was stopped, and none twice."""
    from clearml_hooks.automation import TriggerScheduler

    catalog = store.catalog
    model_ops.publish(catalog, model_ops.create_model(catalog, name="old", project="p"))
    calls: list[str] = []

    def run_until(n: int) -> None:
        sched = TriggerScheduler(pooling_frequency_minutes=0.01, store=store, consumer="deploy")
        sched.add_model_trigger(schedule_function=calls.append, trigger_on_publish=True)
        thread = threading.Thread(target=sched.start, daemon=True)
        thread.start()
        try:
            wait_for(lambda: len(calls) >= n, timeout=10)
            time.sleep(0.4)  # nothing more comes
        finally:
            sched.stop()
            thread.join(timeout=5)

    run_until(0)  # a new consumer starts at the end: "old" is not called back
    a = model_ops.create_model(catalog, name="a", project="p")
    b = model_ops.create_model(catalog, name="b", project="p")
    model_ops.publish(catalog, a)
    model_ops.publish(catalog, b)  # both while no scheduler runs
    run_until(2)
    assert calls == [a, b]
    run_until(2)  # started again with nothing new: nothing is called twice
    assert calls == [a, b]
    assert ev.get_cursor(catalog, "deploy") == ev.last_id(catalog)
