"""clearml-hooks watch, the options test_events.py leaves out, on real processes: --from-start,
--on new-version / archive with {version} and the CLEARML_HOOKS_* environment, a command that
times out, and webhook retries whose waits double (checked on a real HTTP receiver that
computes the HMAC itself)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time

from clearml_hooks.store import events as ev
from clearml_hooks.store import model_ops
from clearml_hooks.store.catalog import SqlCatalog
from tests.eventutil import LocalHTTPServer, Proc, QuietHandler, wait_for

DUMP = """\
import json, os, sys, time
env = {k: v for k, v in os.environ.items() if k.startswith("CLEARML_HOOKS_")}
if env.get("CLEARML_HOOKS_MODEL_NAME") == "slow":
    open(sys.argv[1] + ".slowpid", "w").write(str(os.getpid()))
    time.sleep(30)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "env": env}) + "\\n")
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose (its parent, the watcher's shell, reaps it)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _lines(path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def test_from_start_new_version_archive_env_and_timeout(catalog, tmp_path):
    from clearml_hooks import OutputModel, Task

    dump = tmp_path / "dump.py"
    dump.write_text(DUMP)
    out = tmp_path / "out.jsonl"
    task = Task.init(project_name="p", task_name="train", auto_connect_frameworks=False)
    weights = tmp_path / "w.bin"
    om = OutputModel(task=task, name="net")
    for i in (1, 2):  # two versions before any watcher runs
        weights.write_bytes(bytes([i]) * 64)
        om.update_weights(str(weights), async_enable=False)
    task.close()
    cmd = f"{sys.executable} {dump} {out} {{model_id}} {{event}} {{version}} {{name}} {{project}}"
    args = ["--on", "new-version", "--on", "archive", "--project", "p", "--consumer", "deploy",
            "--timeout", "2", "--exec", cmd]
    # a plain watcher (no consumer) starts at the end of the log: it sees nothing old
    plain = Proc("watch", "--on", "new-version", "--exec", cmd.replace(str(out), str(out) + "2"))
    # a new consumer with --from-start delivers the log from its first event
    w = Proc("watch", *args, "--from-start")
    try:
        plain.wait_line("clearml-hooks watch: exec")
        w.wait_line("clearml-hooks watch as consumer 'deploy'")
        wait_for(lambda: len(_lines(out)) == 2)
        # a command that runs over --timeout is logged, and the next event still goes out
        slow = model_ops.create_model(catalog, name="slow", project="p")
        model_ops.set_archived(catalog, slow, True)
        model_ops.set_archived(catalog, om.id, True)
        w.wait_line("command timed out after 2 s and was stopped")
        slow_pid = int((tmp_path / "out.jsonl.slowpid").read_text())
        wait_for(lambda: not _alive(slow_pid), timeout=5)  # the command's own child too
        wait_for(lambda: len(_lines(out)) == 3, timeout=20)
    finally:
        w.stop()
        plain.stop()
    got = _lines(out)
    assert [g["argv"] for g in got] == [
        [om.id, "version_ready", "1", "net", "p"],
        [om.id, "version_ready", "2", "net", "p"],
        [om.id, "archived", "2", "net", "p"]]
    env = got[1]["env"]
    event = json.loads(env["CLEARML_HOOKS_EVENT_JSON"])
    want = {"CLEARML_HOOKS_EVENT": "version_ready",
                   "CLEARML_HOOKS_EVENT_ID": str(event["id"]),
                   "CLEARML_HOOKS_MODEL_ID": om.id, "CLEARML_HOOKS_MODEL_NAME": "net",
                   "CLEARML_HOOKS_PROJECT": "p", "CLEARML_HOOKS_VERSION": "2",
                   "CLEARML_HOOKS_TASK_ID": task.id}
    assert {k: env.get(k) for k in want} == want
    assert event["event"] == "version_ready" and event["version"] == 2
    assert event["model_id"] == om.id and event["task_id"] == task.id
    assert not (tmp_path / "out.jsonl2").exists()  # the plain watcher saw nothing old
    assert ev.get_cursor(catalog, "deploy") == ev.last_id(catalog)


class _Receiver:
    """Answers 503 to the first ``fail`` requests, then 204; records arrival times and checks
    the signature with its own HMAC-SHA256."""

    def __init__(self, secret: bytes, fail: int) -> None:
        self.times: list[float] = []
        self.bodies: list[bytes] = []
        self.bad: list[str] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.times.append(time.monotonic())
                want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                if self.headers.get("X-ClearML-Hooks-Signature") != want:
                    receiver.bad.append(self.headers.get("X-ClearML-Hooks-Signature") or "")
                if self.headers.get("X-ClearML-Hooks-Event") != json.loads(body)["event"]:
                    receiver.bad.append("event header")
                receiver.bodies.append(body)
                self.send_response(503 if len(receiver.times) <= fail else 204)
                self.end_headers()

        self.http = LocalHTTPServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


def test_webhook_retries_back_off_exponentially(catalog):
    receiver = _Receiver(b"k3y", fail=3)
    w = None
    try:
        w = Proc("watch", "--on", "publish", "--webhook", receiver.url, "--tries", "4",
                 "--backoff", "0.25", env={"CLEARML_HOOKS_WEBHOOK_SECRET": "k3y"})
        w.wait_line("clearml-hooks watch: webhook")
        mid = model_ops.create_model(catalog, name="m", project="p")
        model_ops.publish(catalog, mid)
        w.wait_line("delivered (try 4)", timeout=20)
    finally:
        if w is not None:
            w.stop()
        receiver.close()
    assert receiver.bad == []
    assert len(receiver.times) == 4 and len(set(receiver.bodies)) == 1
    assert json.loads(receiver.bodies[0])["model_id"] == mid
    gaps = [b - a for a, b in zip(receiver.times[:-1], receiver.times[1:], strict=True)]
    for i, gap in enumerate(gaps):  # 0.25, 0.5, 1.0 s
        assert 0.25 * 2 ** i * 0.9 <= gap < 0.25 * 2 ** i + 0.75, gaps
    assert ev.dead_letters(catalog) == []


def test_watcher_outlives_a_postgres_outage(pg_server, tmp_path):
    """The watcher's database refuses connections for a while (its connections are killed):
    the watcher logs it, waits, and delivers the next event once the database is back."""
    import uuid

    import psycopg

    name = "wo" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_server.url.rsplit("/", 1)[0] + "/" + name
    writer = SqlCatalog(url)
    out = tmp_path / "out.txt"
    w = Proc("watch", "--on", "publish", "--consumer", "c", "--exec",
             f"echo {{model_id}} >> {out}",
             env={"CLEARML_HOOKS_CATALOG_URL": url, "CLEARML_HOOKS_HOME": str(tmp_path / "h")})
    try:
        w.wait_line("clearml-hooks watch as consumer 'c'", timeout=60)
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
            # the event log, or the consumer's cursor when the outage comes before the watcher
            # has read it (it takes the consumer's lock after its banner)
            w.wait_line("clearml-hooks: cannot read the", timeout=20)
            time.sleep(1.0)  # a few failed tries
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        writer.engine.dispose()  # its pooled connections were killed too
        mid = model_ops.create_model(writer, name="m", project="p")
        model_ops.publish(writer, mid)
        wait_for(lambda: out.exists() and out.read_text().split() == [mid], timeout=30)
        assert w.proc.poll() is None
        assert any(" works again (after " in ln for ln in w.lines), w.lines
    finally:
        w.stop()
        writer.close()
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
