"""Adversarial tests of three recent features, as a hostile user or environment would use them:

- Alembic schema migrations: kill -9 at every statement of an upgrade, a read-only old store;
- http(s) weights URLs: servers that hang, lie about Content-Length, drop the connection,
  redirect forever or change their bytes; cached copies tampered with; concurrent downloads;
- settings: malformed config files and values.

Real processes, real servers, real catalogs; nothing mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clearml_hooks.store import migrations
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "pre_alembic_store"
CLASSIFIER = "2489dd351f114778ae8bdbb7a2aca4e2"
REGRESSOR = "b83eec592c324dd69c0174126ae389ec"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_HOOKS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# == 1. schema migrations under kill -9 ==========================================================

# An even older catalog than the fixture: the fixture with the tables a release before it lacked
# (metric roll-ups with their triggers, the event log) and two indexes dropped, so the baseline's
# upgrade really creates tables, triggers, indexes and back-fills rows, not only a stamp.
_OLDER = """
DROP TRIGGER IF EXISTS model_scalars_last_insert;
DROP TRIGGER IF EXISTS model_scalars_last_update;
DROP TRIGGER IF EXISTS model_scalars_bucket_insert;
DROP TRIGGER IF EXISTS model_scalars_bucket_update;
DROP TABLE model_metric_last;
DROP TABLE model_scalar_buckets;
DROP TABLE events;
DROP TABLE event_consumers;
DROP TABLE event_dead_letters;
DROP INDEX ix_models_name;
DROP INDEX ix_snapshots_digest;
"""


def _older_store(dest: Path) -> None:
    shutil.copytree(FIXTURE, dest)
    with sqlite3.connect(dest / "catalog.db") as conn:
        conn.executescript(_OLDER)
    conn.close()


# Runs in a subprocess: imports once, then for every kill point forks a child that opens a copy of
# the older catalog (which upgrades it) and SIGKILLs itself right before its k-th SQL statement
# (or right before COMMIT); the parent checks the catalog is old or new, never half, then opens
# it (which must finish the upgrade) and checks every model and snapshot.
_KILL_EVERYWHERE = r"""
import json, os, shutil, signal, sqlite3, sys
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from clearml_hooks.store import migrations, schema as s
from clearml_hooks.store.catalog import SqlCatalog
import clearml_hooks.store.migrations.upgrade  # noqa: F401 - as a slow first open would

older, work = sys.argv[1], sys.argv[2]
EXPECTED_MODELS = json.loads(sys.argv[3])

def state(db):
    conn = sqlite3.connect(db)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        rev = (conn.execute("SELECT version_num FROM alembic_version").fetchall()
               if "alembic_version" in names else None)
        return names, rev
    finally:
        conn.close()

old_names, _ = state(os.path.join(older, "catalog.db"))

def run_child(db, kill_at):
    pid = os.fork()
    if pid == 0:
        count = [0]
        def before(*_a):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_commit(_conn):
            if kill_at == "commit":
                os.kill(os.getpid(), signal.SIGKILL)
        event.listen(Engine, "before_cursor_execute", before)
        event.listen(Connection, "commit", on_commit)
        try:
            SqlCatalog("sqlite:///" + db).close()
        finally:
            print(json.dumps({"statements": count[0]}), flush=True)
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

def check(kill_at):
    folder = os.path.join(work, f"k{kill_at}")
    shutil.copytree(older, folder)
    db = os.path.join(folder, "catalog.db")
    killed = run_child(db, kill_at)
    names, rev = state(db)
    half = not ((rev is None and names == old_names) or rev == [(migrations.HEAD,)])
    catalog = SqlCatalog("sqlite:///" + db)  # a later process finishes the upgrade
    try:
        with catalog.read() as conn:
            from alembic.autogenerate import compare_metadata
            from alembic.migration import MigrationContext
            diff = compare_metadata(MigrationContext.configure(conn), s.metadata)
            last = conn.exec_driver_sql(
                "SELECT value FROM model_metric_last WHERE model_id = ? AND title = 'loss'",
                (EXPECTED_MODELS[0],)).scalar() if EXPECTED_MODELS else None
            triggers = sorted(r[0] for r in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        models = {}
        for mid in EXPECTED_MODELS:
            row = catalog.get_model(mid)
            snaps = catalog.snapshots_of(mid)
            models[mid] = {"name": row and row["name"],
                           "snapshots": [(x["version"], x["state"],
                                          [f["sha256"] for f in catalog.snapshot(x["id"])["files"]])
                                         for x in snaps]}
    finally:
        catalog.close()
    shutil.rmtree(folder)
    return {"kill_at": kill_at, "killed": killed, "half": half, "diff": [str(d) for d in diff],
            "last": last, "triggers": triggers, "models": models}

# how many statements a clean upgrade issues
probe = os.path.join(work, "probe")
shutil.copytree(older, probe)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    seen = []
    event.listen(Engine, "before_cursor_execute",
                 lambda _c, _cur, stmt, *a: seen.append(stmt.split(None, 1)[0].upper()))
    SqlCatalog("sqlite:///" + os.path.join(probe, "catalog.db")).close()
    os.write(w, json.dumps(seen).encode())
    os._exit(0)
os.close(w)
chunks = []
while chunk := os.read(r, 65536):
    chunks.append(chunk)
seen = json.loads(b"".join(chunks))
os.waitpid(pid, 0)
# every statement that changes something, and the one after it (reads and PRAGMAs in between
# change nothing on disk), then COMMIT itself
after = (0, 1) if sys.argv[4] == "and after" else (0,)
points = sorted({i + d for i, verb in enumerate(seen, 1) if verb not in ("SELECT", "PRAGMA")
                 for d in after if i + d <= len(seen)})
if sys.argv[4] == "some writes":  # every third one, and the last
    points = sorted({*points[::3], points[-1]})
print(json.dumps({"total": len(seen), "points": len(points)}), flush=True)
for kill_at in [*points, "commit"]:
    print(json.dumps(check(kill_at)), flush=True)
"""


def _reference(db: Path, ids: list[str]) -> dict:
    from clearml_hooks.store.catalog import SqlCatalog

    catalog = SqlCatalog(f"sqlite:///{db}")
    try:
        out = {}
        for mid in ids:
            snaps = catalog.snapshots_of(mid)
            out[mid] = {"name": catalog.get_model(mid)["name"],
                        "snapshots": [[x["version"], x["state"],
                                       [f["sha256"] for f in catalog.snapshot(x["id"])["files"]]]
                                      for x in snaps]}
        with catalog.read() as conn:
            triggers = sorted(r[0] for r in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        return {"models": out, "triggers": triggers}
    finally:
        catalog.close()


def test_kill_9_at_every_statement_of_an_upgrade_never_leaves_it_half_migrated(tmp_path):
    older = tmp_path / "older"
    _older_store(older)
    reference_copy = tmp_path / "reference"
    shutil.copytree(older, reference_copy)
    ids = [CLASSIFIER, REGRESSOR]
    want = _reference(reference_copy / "catalog.db", ids)  # an uninterrupted upgrade
    assert want["models"][CLASSIFIER]["snapshots"], "the fixture has snapshots to check"
    assert "model_scalars_last_insert" in want["triggers"]
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", _KILL_EVERYWHERE, str(older), str(work),
                          json.dumps(ids), "and after"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    total, points = lines[0]["total"], lines[0]["points"]
    results = [x for x in lines if "kill_at" in x]
    assert points > 20 and len(results) == points + 1, out.stdout[-2000:]
    assert all(r["killed"] for r in results), "every child died by SIGKILL where it was told to"
    for r in results:
        where = f"killed before statement {r['kill_at']} of {total}"
        assert not r["half"], f"{where}: the catalog was left half-migrated"
        assert r["diff"] == [], f"{where}: reopening did not finish the schema: {r['diff']}"
        assert r["triggers"] == want["triggers"], where
        assert r["last"] is not None, f"{where}: model_metric_last was not back-filled"
        assert {k: {"name": v["name"], "snapshots": [list(x) for x in v["snapshots"]]}
                for k, v in r["models"].items()} == want["models"], where
    assert sorted(os.listdir(work)) == ["probe"]


def test_kill_9_while_a_new_catalog_is_created_never_leaves_it_half_made(tmp_path):
    """The first open of a new store, killed before every third of its CREATE statements
    and at COMMIT: the next open finds nothing or everything, and makes it whole at head."""
    empty = tmp_path / "empty"
    empty.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", _KILL_EVERYWHERE, str(empty), str(work), "[]",
                          "some writes"], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    results = [x for x in lines if "kill_at" in x]
    assert lines[0]["points"] > 10 and len(results) == lines[0]["points"] + 1
    for r in results:
        where = f"killed before statement {r['kill_at']} of {lines[0]['total']}"
        assert r["killed"] and not r["half"], where
        assert r["diff"] == [] and "model_scalars_last_insert" in r["triggers"], where


def test_an_old_store_killed_mid_upgrade_is_readable_through_the_api(tmp_path, monkeypatch):
    """SIGKILL a real process that is opening an old store at random moments, many times; then
    the models, their snapshots and their bytes are all there."""
    home = tmp_path / "old"
    _older_store(home)
    code = ("import sys\nfrom clearml_hooks.store.catalog import SqlCatalog\n"
            "print('go', flush=True)\nSqlCatalog(sys.argv[1]).close()\n")
    url = f"sqlite:///{home / 'catalog.db'}"
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        proc = subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout.readline() == b"go\n"
            time.sleep(delay)
        finally:
            proc.kill()
            proc.wait(30)
            proc.stdout.close()
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(home))
    from clearml_hooks import Model

    classifier = Model(CLASSIFIER)
    assert [(x["version"], x["state"]) for x in classifier.snapshots] == [(1, "ready"),
                                                                        (2, "ready")]
    assert Path(classifier.get_local_copy()).read_bytes() == b"second weights, longer\n"
    assert Path(classifier.get_local_copy(version=1)).read_bytes()
    assert Path(Model(REGRESSOR).get_local_copy()).read_bytes() == b"regressor bytes\n"
    assert classifier.get_last_scalar_metrics()["loss"]["train"]["last"] == 1 / 3
    with sqlite3.connect(home / "catalog.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (migrations.HEAD,)]
    conn.close()



def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


_OPEN_MODEL = f"""
from clearml_hooks.store.catalog import SqlCatalog
import os
print(SqlCatalog("sqlite:///" + os.environ["CLEARML_HOOKS_HOME"] + "/catalog.db")
      .get_model({CLASSIFIER!r})["name"])
"""


@pytest.mark.parametrize("read_only", ["file and folder", "folder"])
def test_a_read_only_old_store_is_a_clear_error_and_nothing_is_lost(read_only, tmp_path):
    home = tmp_path / "old"
    _older_store(home)
    db = home / "catalog.db"
    before = db.read_bytes()
    try:
        if read_only == "file and folder":
            db.chmod(0o444)
        home.chmod(0o555)
        out = subprocess.run([*_unprivileged(), sys.executable, "-c", _OPEN_MODEL], cwd=REPO,
                             env=_env(CLEARML_HOOKS_HOME=str(home)), capture_output=True,
                             text=True, timeout=60)
    finally:
        home.chmod(0o755)
        db.chmod(0o644)
    assert out.returncode != 0
    assert "read-only" in out.stderr and "writable" in out.stderr, out.stderr[-2000:]
    assert str(db) in out.stderr
    assert db.read_bytes() == before, "the old catalog is untouched"
    assert sorted(p.name for p in home.iterdir()) == ["blobs", "catalog.db"]
    # writable again: it upgrades and reads as if nothing happened
    from clearml_hooks.store.catalog import SqlCatalog

    catalog = SqlCatalog(f"sqlite:///{db}")
    try:
        assert catalog.get_model(CLASSIFIER)["name"] == "classifier"
        assert [x["state"] for x in catalog.snapshots_of(CLASSIFIER)] == ["ready", "ready"]
    finally:
        catalog.close()


# == 2. http(s) weights URLs against hostile servers =============================================


class RawServer:
    """An HTTP server on 127.0.0.1 made of a plain socket, so it can misbehave as real ones do:
    ``handler(conn, path)`` answers one request however it likes. Stopped by ``close()``."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.stop = threading.Event()
        self.requests: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.sock.settimeout(0.1)  # accept() wakes up to see ``stop``
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(30)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1].decode("latin-1")
            self.requests.append(path)
            try:
                self.handler(conn, path)
            except OSError:
                pass  # the client went away

    def wait(self, seconds: float) -> None:
        """Stall a handler (a server that hangs) until the test ends."""
        self.stop.wait(seconds)

    def close(self) -> None:
        self.stop.set()
        self.threads[0].join(10)
        self.sock.close()
        for thread in self.threads[1:]:
            thread.join(10)


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def start(handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _ok(body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n").encode() + body


def _remote_cache(store_dir: Path) -> Path:
    return store_dir / "cache" / "remote"


def _leftovers(store_dir: Path) -> list[str]:
    """Temporary files of downloads left in the cache (there must never be any)."""
    root = _remote_cache(store_dir)
    return sorted(p.name for p in root.rglob("*") if ".fetch" in p.name) if root.exists() else []


def _cached_weights(store_dir: Path) -> list[Path]:
    root = _remote_cache(store_dir)
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and root in p.parents and p.parent != root) if root.exists() else []


@pytest.fixture
def short_timeouts(monkeypatch):
    """A read timeout of 1 s instead of 120 s, so a hang is seen quickly."""
    from clearml_hooks.models import downloads

    monkeypatch.setattr(downloads, "HTTP_READ_TIMEOUT", 1.0)
    monkeypatch.setattr(downloads, "HTTP_CONNECT_TIMEOUT", 2.0)


GOOD = b"good weights " * 5000


def test_a_server_that_accepts_and_never_answers_fails_in_bounded_time(task, store_dir,
                                                                      raw_server, short_timeouts):
    from clearml_hooks import InputModel

    hangs = {
        "silent": lambda server: lambda conn, path: server[0].wait(60),
        "status line only": lambda server: lambda conn, path: (
            conn.sendall(b"HTTP/1.1 200 OK\r\n"), server[0].wait(60)),
        "half the body, connection kept": lambda server: lambda conn, path: (
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(GOOD)}\r\n\r\n".encode()
                         + GOOD[:1000]), server[0].wait(60)),
    }
    for what, make in hangs.items():
        box: list[RawServer] = []
        box.append(raw_server(make(box)))
        model = InputModel.import_model(f"{box[0].base}/model.pt", name=f"hang {what}")
        start = time.monotonic()
        with pytest.raises(ValueError, match=r"did not answer the download .* in time"):
            model.get_local_copy(raise_on_error=True)
        assert time.monotonic() - start < 15, what
        if what == "silent":
            assert model.get_local_copy() is None  # without raise_on_error: None, not a hang
        assert _leftovers(store_dir) == [] and _cached_weights(store_dir) == [], what


def test_a_server_dripping_bytes_is_cut_off_and_a_steady_one_is_not(task, store_dir, raw_server,
                                                                    monkeypatch):
    """A byte now and then never trips the read timeout; under the minimum rate for the
    window (curl's --speed-limit / --speed-time) the download fails, says why, leaves nothing;
    a server that is slow but steady above the rate is downloaded in full."""
    from clearml_hooks import InputModel, StorageManager
    from clearml_hooks.models import downloads

    monkeypatch.setattr(downloads, "HTTP_MIN_RATE", 2000)
    monkeypatch.setattr(downloads, "HTTP_STALL_SECONDS", 1.0)

    def drip(conn, path):
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(GOOD)}\r\n\r\n".encode())
        for i in range(len(GOOD)):
            conn.sendall(GOOD[i:i + 1])
            if server.stop.wait(0.1):
                return

    def steady(conn, path):
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(GOOD)}\r\n\r\n".encode())
        for i in range(0, len(GOOD), 8000):  # 8 KB every 0.25 s: about 32 KB/s, for 2 s
            conn.sendall(GOOD[i:i + 8000])
            time.sleep(0.25)

    server = raw_server(drip)
    model = InputModel.import_model(f"{server.base}/drip.pt", name="drip")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"too slowly .* under 2000 bytes/s for 1 s"):
        model.get_local_copy(raise_on_error=True)
    assert time.monotonic() - start < 10
    assert _leftovers(store_dir) == [] and _cached_weights(store_dir) == []
    start = time.monotonic()
    assert StorageManager.get_local_copy(f"{server.base}/drip-again.pt") is None
    assert time.monotonic() - start < 10

    fine = raw_server(steady)
    model = InputModel.import_model(f"{fine.base}/steady.pt", name="steady")
    assert open(model.get_local_copy(raise_on_error=True), "rb").read() == GOOD


def test_a_body_cut_short_is_never_returned_nor_cached(task, store_dir, raw_server):
    from clearml_hooks import InputModel

    mode = {"now": "close"}

    def handler(conn, path):
        if mode["now"] == "close":  # fewer bytes than Content-Length, then the connection drops
            conn.sendall(_ok(GOOD)[:-1000])
        elif mode["now"] == "chunked":  # a chunked body cut before its last chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + f"{len(GOOD):x}\r\n".encode() + GOOD + b"\r\n")
        elif mode["now"] == "huge":  # a Content-Length of a petabyte, 1000 bytes, then closed
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1125899906842624\r\n\r\n"
                         + GOOD[:1000])
        else:
            conn.sendall(_ok(GOOD))

    server = raw_server(handler)
    model = InputModel.import_model(f"{server.base}/weights.bin")
    for broken in ("close", "chunked", "huge"):
        mode["now"] = broken
        with pytest.raises(ValueError, match="could not download"):
            model.get_local_copy(raise_on_error=True)
        assert model.get_local_copy() is None, broken
        assert _leftovers(store_dir) == [] and _cached_weights(store_dir) == [], broken
    mode["now"] = "good"
    path = Path(model.get_local_copy(raise_on_error=True))
    assert path.read_bytes() == GOOD and path.name == "weights.bin"
    asked = len(server.requests)
    mode["now"] = "close"  # a cache hit never asks the (now broken) server again
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == GOOD
    assert len(server.requests) == asked
    # a forced download that breaks leaves the good copy in place, and never a partial one
    with pytest.raises(ValueError, match="could not download"):
        model.get_local_copy(raise_on_error=True, force_download=True)
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == GOOD
    assert _leftovers(store_dir) == []


def test_a_redirect_loop_is_a_clear_error(task, store_dir, raw_server):
    from clearml_hooks import InputModel

    def handler(conn, path):
        target = "/b.pt" if path == "/a.pt" else "/a.pt"
        conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())

    server = raw_server(handler)
    model = InputModel.import_model(f"{server.base}/a.pt")
    with pytest.raises(ValueError, match=r"redirected the download .* too many times"):
        model.get_local_copy(raise_on_error=True)
    assert 2 < len(server.requests) < 100
    assert _leftovers(store_dir) == [] and _cached_weights(store_dir) == []


def test_bytes_that_change_on_the_server_are_never_mixed(task, store_dir, raw_server):
    from clearml_hooks import InputModel

    version = {"body": b"v1" * 40_000}
    server = raw_server(lambda conn, path: conn.sendall(_ok(version["body"])))
    model = InputModel.import_model(f"{server.base}/model.pt")
    path = Path(model.get_local_copy(raise_on_error=True))
    assert path.read_bytes() == b"v1" * 40_000
    version["body"] = b"version two" * 1000  # the server's file changed
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == b"v1" * 40_000
    assert len(server.requests) == 1, "downloaded once, as documented"
    assert Path(model.get_local_copy(raise_on_error=True, force_download=True)).read_bytes() == (
        b"version two" * 1000)
    with open(path, "r+b") as f:  # the cached copy is damaged: downloaded again, all new bytes
        f.write(b"XXXX")
    assert path.read_bytes() != b"version two" * 1000
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == b"version two" * 1000
    assert len(server.requests) == 3 and _leftovers(store_dir) == []


def test_urls_with_queries_fragments_unicode_and_spaces(task, store_dir, tmp_path):
    import functools
    import http.server

    from clearml_hooks import InputModel, Model, OutputModel

    root = tmp_path / "served"
    root.mkdir()
    files = {"my modèl v2.pt": b"unicode and spaces", "plain.pt": b"plain bytes"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cases = [
            (f"{base}/my modèl v2.pt", "my modèl v2.pt"),
            (f"{base}/my%20mod%C3%A8l%20v2.pt", "my modèl v2.pt"),
            (f"{base}/plain.pt?token=a%2Fb&v=2", "plain.pt"),
            (f"{base}/plain.pt#section", "plain.pt"),
            (f"{base}/plain.pt?v=3#frag", "plain.pt"),
        ]
        paths = set()
        for url, name in cases:
            model = InputModel.import_model(url)
            assert model.url == url
            path = Path(model.get_local_copy(raise_on_error=True))
            assert path.name == name, url
            assert path.read_bytes() == files[name], url
            assert Path(Model(model.id).get_local_copy(raise_on_error=True)) == path
            paths.add(path)
        assert len(paths) == len(cases), "every URL has its own cached copy"
        out = OutputModel(task=task, name="registered with a query")
        out.update_weights(register_uri=f"{base}/plain.pt?sig=x y")
        assert Path(Model(out.id).get_local_copy(raise_on_error=True)).read_bytes() == (
            b"plain bytes")
        assert _leftovers(store_dir) == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_tampered_cached_copy_is_never_handed_out(task, store_dir, raw_server, tmp_path):
    from clearml_hooks import InputModel

    server = raw_server(lambda conn, path: conn.sendall(_ok(GOOD)))
    model = InputModel.import_model(f"{server.base}/model.pt")
    path = Path(model.get_local_copy(raise_on_error=True))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"E" * len(GOOD))
    evil_dir = tmp_path / "evil-dir"
    evil_dir.mkdir()
    (evil_dir / "model.pt").write_bytes(b"evil")

    def as_folder(p):
        p.unlink()
        p.mkdir()
        (p / "payload").write_bytes(b"evil")

    def same_size_and_mtime(p):
        st = p.stat()
        p.write_bytes(b"E" * len(GOOD))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))

    tampering = {
        "truncated": lambda p: os.truncate(p, 10),
        "same size and mtime": same_size_and_mtime,
        "symlink to another file": lambda p: (p.unlink(), p.symlink_to(evil)),
        "symlink to a folder": lambda p: (p.unlink(), p.symlink_to(evil_dir)),
        "a folder": as_folder,
        "deleted": lambda p: p.unlink(),
    }
    for what, tamper in tampering.items():
        tamper(path)
        got = Path(model.get_local_copy(raise_on_error=True))
        assert got == path, what
        assert got.is_file() and not got.is_symlink(), what
        assert got.read_bytes() == GOOD, what
    assert evil.read_bytes() == b"E" * len(GOOD), "a symlink's target is never written"
    assert (evil_dir / "model.pt").read_bytes() == b"evil"
    assert _leftovers(store_dir) == []


_SLOW_READER = """
import hashlib, sys
from clearml_hooks import Model
path = Model(sys.argv[1]).get_local_copy(raise_on_error=True)
print(path, hashlib.sha256(open(path, "rb").read()).hexdigest(), flush=True)
"""


def _slow_body(server: RawServer, body: bytes, pieces: int, pause: float):
    def handler(conn, path):
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode())
        step = len(body) // pieces + 1
        for i in range(0, len(body), step):
            conn.sendall(body[i:i + step])
            if server.stop.wait(pause):
                return
    return handler


@pytest.mark.parametrize("server", ["same bytes", "bytes differ per request"])
def test_two_processes_downloading_the_same_url_at_once(server, task, store_dir, raw_server):
    from clearml_hooks import InputModel

    bodies = [os.urandom(2_000_000), os.urandom(2_000_000)]
    if server == "same bytes":
        bodies[1] = bodies[0]
    box: list[RawServer] = []

    def handler(conn, path):
        index = len(box[0].requests) - 1
        deadline = time.monotonic() + 30  # both downloads are under way before either ends
        while len(box[0].requests) < 2 and time.monotonic() < deadline:
            box[0].wait(0.05)
        _slow_body(box[0], bodies[index % 2], 8, 0.1)(conn, path)

    box.append(raw_server(handler))
    model = InputModel.import_model(f"{box[0].base}/big.pt")
    env = _env(CLEARML_HOOKS_HOME=str(store_dir))
    procs = [subprocess.Popen([sys.executable, "-c", _SLOW_READER, model.id], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        outs.append(out.split())
    versions = {hashlib.sha256(b).hexdigest() for b in bodies}
    assert all(sha in versions for _path, sha in outs), "whole bytes of one version, never mixed"
    assert len({path for path, _sha in outs}) == 1
    assert len(box[0].requests) == 2, "both downloaded, at the same time"
    first = Path(model.get_local_copy(raise_on_error=True)).read_bytes()
    assert first in bodies
    asked = len(box[0].requests)
    if server == "same bytes":
        assert asked == 2, "the copy they left is verified: no new request"
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == first
    assert len(box[0].requests) == asked, "then a cache hit"
    assert _leftovers(store_dir) == []
    assert [p.name for p in _cached_weights(store_dir)] == ["big.pt"]


_KILLED_READER = """
import sys
from clearml_hooks import Model
print("start", flush=True)
Model(sys.argv[1]).get_local_copy(raise_on_error=True)
"""


def test_a_download_killed_midway_leaves_nothing_behind(task, store_dir, raw_server):
    from clearml_hooks import InputModel

    body = os.urandom(1_000_000)
    sent = threading.Event()
    mode = {"stall": True}

    def handler(conn, path):
        if mode["stall"]:  # half the body, then nothing until the reader is killed
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body[:500_000])
            sent.set()
            box[0].wait(60)
        else:
            conn.sendall(_ok(body))

    box = [raw_server(handler)]
    model = InputModel.import_model(f"{box[0].base}/model.pt")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_READER, model.id], cwd=REPO,
                            env=_env(CLEARML_HOOKS_HOME=str(store_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert sent.wait(30), "the reader never asked"
        deadline = time.monotonic() + 10
        while not _leftovers(store_dir) and time.monotonic() < deadline:
            time.sleep(0.05)  # until its partial file is on disk
        assert _leftovers(store_dir), "the killed reader was writing a temporary file"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    mode["stall"] = False
    path = Path(model.get_local_copy(raise_on_error=True))
    assert path.read_bytes() == body
    assert _leftovers(store_dir) == [], "the dead download's partial file is removed"


# == 3. settings: hostile values that must still work =============================================


def test_a_huge_catalog_timeout_still_opens_a_postgres_catalog(pg_server):
    """A catalog given a timeout of a month (or 1e300) by a direct caller (the setting refuses
    more than 24 days) must not turn into an 'invalid integer value' from libpq."""
    from clearml_hooks.store.catalog import SqlCatalog

    for seconds in (3e6, 1e300):
        catalog = SqlCatalog(pg_server.url, timeout=seconds)
        try:
            assert isinstance(catalog.list_tasks(limit=1), list)
        finally:
            catalog.close()


def test_a_password_in_a_weights_url_never_shows_in_errors_or_logs(task, raw_server, caplog):
    from clearml_hooks import InputModel

    server = raw_server(lambda conn, path: conn.sendall(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
    url = server.base.replace("http://", "http://alice:s3cr3t-pw@") + "/model.pt"
    model = InputModel.import_model(url)
    with caplog.at_level("DEBUG", logger="clearml_hooks"):
        with pytest.raises(ValueError) as info:
            model.get_local_copy(raise_on_error=True)
        assert model.get_local_copy() is None
    assert "not found" in str(info.value) and "alice:***@" in str(info.value)
    assert "s3cr3t-pw" not in str(info.value)
    assert "s3cr3t-pw" not in caplog.text
    assert caplog.text, "the failure was logged"


_FULL_DISK_READER = """
import resource, signal, sys
from clearml_hooks import Model
model = Model(sys.argv[1])
model.name  # the store is open before the limit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, resource.RLIM_INFINITY))
try:
    model.get_local_copy(raise_on_error=True)
except ValueError as exc:
    print(exc)
"""


def test_a_full_disk_is_not_reported_as_an_unreachable_server(task, store_dir, raw_server):
    """A download the machine cannot keep (disk full, file size limit) says so, leaves no
    partial file, and the next read with room gets the whole file."""
    from clearml_hooks import InputModel

    body = os.urandom(2_000_000)
    server = raw_server(lambda conn, path: conn.sendall(_ok(body)))
    model = InputModel.import_model(f"{server.base}/model.pt")
    out = subprocess.run([sys.executable, "-c", _FULL_DISK_READER, model.id], cwd=REPO,
                         env=_env(CLEARML_HOOKS_HOME=str(store_dir)), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "could not save the download" in out.stdout and "File too large" in out.stdout
    assert "cannot reach" not in out.stdout
    assert _leftovers(store_dir) == [] and _cached_weights(store_dir) == []
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == body


def test_a_url_whose_file_name_is_longer_than_the_filesystem_allows(task, store_dir, raw_server):
    from clearml_hooks import InputModel

    server = raw_server(lambda conn, path: conn.sendall(_ok(GOOD)))
    stem = "checkpoint-" + "é" * 150  # 311 bytes of UTF-8: longer than any file name
    model = InputModel.import_model(f"{server.base}/{stem}.safetensors?sig=abc")
    path = Path(model.get_local_copy(raise_on_error=True))
    assert path.read_bytes() == GOOD
    assert len(os.fsencode(path.name)) <= 255 and path.name.endswith(".safetensors")
    assert path.name.startswith("checkpoint-éé")
    assert Path(model.get_local_copy(raise_on_error=True)) == path
    assert len(server.requests) == 1 and _leftovers(store_dir) == []


def test_a_catalog_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    from clearml_hooks.store.catalog import CatalogError, SqlCatalog

    db = tmp_path / "catalog.db"
    junk = b"PK\x03\x04 this is a zip, not a catalog" * 200
    db.write_bytes(junk)
    with pytest.raises(CatalogError, match=r"catalog\.db is not a SQLite database.*left unchanged"):
        SqlCatalog(f"sqlite:///{db}")
    assert db.read_bytes() == junk


def test_downloads_of_other_machines_sharing_the_cache_are_left_alone(task, store_dir,
                                                                      raw_server):
    """A home folder on NFS is one cache for many machines: a partial download named after a
    pid is removed only if that pid is this machine's and dead, or it is an hour old."""
    from clearml_hooks import InputModel
    from clearml_hooks.models.downloads import _host

    server = raw_server(lambda conn, path: conn.sendall(_ok(GOOD)))
    model = InputModel.import_model(f"{server.base}/model.pt")
    path = Path(model.get_local_copy(raise_on_error=True))
    other = path.parent / f".fetch-{os.getpid() + 999_999}-{'a' * 32}.0another"
    other_old = path.parent / f".fetch-{os.getpid() + 999_999}-{'b' * 32}.0another"
    ours_dead = path.parent / f".fetch-{2**22 + 12345}-{'c' * 32}.{_host()}"  # no such pid
    for p in (other, other_old, ours_dead):
        p.write_bytes(b"partial")
    os.utime(other_old, (time.time() - 7200, time.time() - 7200))
    path.write_bytes(b"damaged")  # so the next read downloads (and cleans up)
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == GOOD
    assert other.exists(), "another machine's live download is never touched"
    assert not other_old.exists(), "an hour-old partial download is removed"
    assert not ours_dead.exists(), "this machine's dead download is removed"
