"""Adversarial tests of three recent features, as a hostile user or environment would use them:

- Alembic schema migrations: kill -9 at every statement of an upgrade, a read-only old store;
- http(s) weights URLs: servers that hang, lie about Content-Length, drop the connection,
  redirect forever or change their bytes; cached copies tampered with; concurrent downloads;
- settings: malformed config files and values.

Real processes, real servers, real catalogs; nothing mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

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
                (EXPECTED_MODELS[0],)).scalar()
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
points = sorted({k for i, verb in enumerate(seen, 1) if verb not in ("SELECT", "PRAGMA")
                 for k in (i, i + 1) if k <= len(seen)})
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
                          json.dumps(ids)], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=120)
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
