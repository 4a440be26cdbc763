"""The same agent on a team store: PostgreSQL catalog + S3-compatible blobs (real servers)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from clearml_hooks import Task
from tests.conftest import REPO


def test_capture_into_postgres_and_s3(team_store, tmp_path):
    with Task.init(project_name="team", task_name="train") as task:
        assert task.store.catalog.engine.dialect.name == "postgresql"
        for step in range(2):
            torch.save({"w": torch.full((1000,), float(step))}, tmp_path / "model.pt")
        expected = (tmp_path / "model.pt").read_bytes()
        task.flush(wait_for_uploads=True)
        (model,) = task.models["output"]
        assert model.url.startswith(f"s3://{team_store['bucket']}/models/")
        assert [s["state"] for s in model.snapshots] == ["ready", "ready"]
        assert Path(model.get_local_copy()).read_bytes() == expected
        import s3fs

        fs = s3fs.S3FileSystem(key=os.environ["AWS_ACCESS_KEY_ID"],
                               secret=os.environ["AWS_SECRET_ACCESS_KEY"],
                               client_kwargs={"endpoint_url": os.environ["CLEARML_HOOKS_S3_ENDPOINT_URL"]})
        assert len(fs.find(f"{team_store['bucket']}/models")) == 2  # two distinct contents


def test_lineage_across_processes_on_the_team_store(team_store, tmp_path):
    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        from clearml_hooks import Task
        task = Task.init(project_name="team", task_name=sys.argv[1])
        if sys.argv[1] == "train":
            torch.save({{"w": torch.ones(10)}}, {str(tmp_path / 'shared.pt')!r})
        else:
            torch.load({str(tmp_path / 'shared.pt')!r})
        task.close()
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for step in ("train", "evaluate"):
        out = subprocess.run([sys.executable, str(script), step], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    from clearml_hooks.config import Settings
    from clearml_hooks.store import Store

    catalog = Store(Settings.resolve()).catalog
    tasks = {t["name"]: t for t in catalog.list_tasks(project="team")}
    produced = [r for r in catalog.task_models(tasks["train"]["id"]) if r["direction"] == "output"]
    consumed = [r for r in catalog.task_models(tasks["evaluate"]["id"]) if r["direction"] == "input"]
    assert [r["model_id"] for r in consumed] == [r["model_id"] for r in produced]


def test_unreachable_object_store_leaves_snapshot_pending_then_sync_finishes(team_store, tmp_path,
                                                                             monkeypatch):
    good_endpoint = os.environ["CLEARML_HOOKS_S3_ENDPOINT_URL"]
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from clearml_hooks import Task
        task = Task.init(project_name="team", task_name="s3-down")
        torch.save({{"w": torch.arange(100.0)}}, {str(tmp_path / 'm.pt')!r})
        print("training went on")
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_HOOKS_STRICT": "0",
           "CLEARML_HOOKS_S3_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens there
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "training went on" in out.stdout
    expected = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").unlink()

    from clearml_hooks.config import Settings
    from clearml_hooks.store import Store

    catalog = Store(Settings.resolve()).catalog
    (pending,) = catalog.pending_snapshots()
    sync = subprocess.run([sys.executable, "-m", "clearml_hooks", "sync"],
                          env={**os.environ, "PYTHONPATH": str(REPO),
                               "CLEARML_HOOKS_S3_ENDPOINT_URL": good_endpoint},
                          capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stderr
    assert catalog.pending_snapshots() == []
    assert catalog.snapshot(pending["id"])["state"] == "ready"
    from clearml_hooks.models import Model

    model = Model(pending["model_id"], store=Store(Settings.resolve()))
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == expected


def test_offline_run_says_what_it_left_for_sync(tmp_path):
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from clearml_hooks import Task
        Task.init(project_name="p", task_name="offline", output_uri={str(tmp_path / 's')!r})
        torch.save({{"w": 1}}, {str(tmp_path / 'm.pt')!r})
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_HOOKS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 snapshot(s)" in out.stderr and "clearml-hooks sync" in out.stderr
