"""The capture contract (DESIGN.md), clause by clause, with real torch and real processes."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
import torch

from clearml_hooks import Task
from clearml_hooks.config import Settings
from clearml_hooks.store import Store
from clearml_hooks.store.journal import describe
from clearml_hooks.store.recovery import recover
from tests.conftest import run_script


def _open(store_dir: Path) -> Store:
    return Store(Settings.resolve(output_uri=str(store_dir)))


def _snapshots(store: Store) -> list[dict]:
    from sqlalchemy import select

    from clearml_hooks.store import schema as s

    with store.catalog.read() as conn:
        return [dict(r) for r in conn.execute(select(s.snapshots).order_by(s.snapshots.c.created)).mappings()]


def _blob_bytes(store: Store, snap: dict) -> bytes:
    (f,) = store.catalog.snapshot(snap["id"])["files"]
    return Path(store.blobs.path_for(f["sha256"])).read_bytes()


def test_overwrite_right_after_save_keeps_each_snapshot_intact(task, tmp_path):
    path = tmp_path / "ckpt.pt"
    written = []
    for i in range(5):
        torch.save({"w": torch.full((50_000,), float(i))}, path)  # no waiting in between
        written.append(path.read_bytes())
    task.flush(wait_for_uploads=True)
    (model,) = task.models["output"]
    stored = [Path(model.get_local_copy(version=v)).read_bytes() for v in range(1, 6)]
    assert stored == written
    assert task.capture_stats.get("staged_copy", 0) == 0  # hard links, no copy


def test_deleting_the_file_right_after_save_loses_nothing(task, tmp_path):
    path = tmp_path / "gone.pt"
    torch.save({"w": torch.ones(1000)}, path)
    expected = path.read_bytes()
    path.unlink()
    task.flush(wait_for_uploads=True)
    (model,) = task.models["output"]
    assert Path(model.get_local_copy()).read_bytes() == expected


def test_identical_bytes_are_stored_once(task, tmp_path, store_dir):
    state = {"w": torch.arange(10_000.0)}
    for folder in ("a", "b", "c"):  # same file name: torch writes the name into the archive
        (tmp_path / folder).mkdir()
        torch.save(state, tmp_path / folder / "model.pt")
    task.flush(wait_for_uploads=True)
    assert len(task.models["output"]) == 3
    blobs = [p for p in (store_dir / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1


def test_snapshot_is_journaled_when_the_call_returns(store_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")  # nothing finishes in the background
    with Task.init(project_name="p", task_name="journal", output_uri=str(store_dir)):
        torch.save({"w": 1}, tmp_path / "j.pt")
        (journal,) = describe(str(store_dir / "journal"))
        (snap,) = [r.header for r in journal.pending if r.header["t"] == "snap"]
        assert snap["src"] == str(tmp_path / "j.pt") and journal.alive


def _saves_then_exits(tmp_path: Path, count: int, numel: int) -> tuple[Path, Path]:
    """A script that saves ``count`` checkpoints and exits at once, without ``close()``."""
    store = tmp_path / "store"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from clearml_hooks import Task
        Task.init(project_name="p", task_name="exit", output_uri={str(store)!r})
        for i in range({count}):
            torch.save({{"w": torch.randn({numel})}}, {str(tmp_path / 'm')!r} + str(i) + ".pt")
    """))
    return store, script


def test_exit_waits_for_pending_snapshots(tmp_path):
    store, script = _saves_then_exits(tmp_path, 3, 2_000_000)
    out = run_script(script)
    assert out.returncode == 0, out.stderr
    snaps = _snapshots(_open(store))
    assert [s["state"] for s in snaps] == ["ready"] * 3


def test_exit_timeout_leaves_snapshots_pending_and_says_so(tmp_path):
    store, script = _saves_then_exits(tmp_path, 4, 25_000_000)
    out = run_script(script, env={"CLEARML_HOOKS_EXIT_TIMEOUT": "0"})
    assert out.returncode == 0, out.stderr
    assert "not stored yet" in out.stderr and "clearml-hooks sync" in out.stderr
    snaps = _snapshots(_open(store))
    assert len(snaps) < 4 or any(s["state"] == "pending" for s in snaps)
    # the next process that opens the store finishes them
    result = recover(_open(store))
    assert len(result.items) >= 1 and not result.errors
    snaps = _snapshots(_open(store))
    assert len(snaps) == 4 and {s["state"] for s in snaps} == {"ready"}
    assert os.listdir(store / "journal") == [] and os.listdir(store / "staging") == []


@pytest.mark.parametrize("offline", ["1", "0"])
def test_sigkill_leaves_snapshot_that_next_process_finishes(tmp_path, offline):
    store = tmp_path / "store"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, torch
        from clearml_hooks import Task
        Task.init(project_name="p", task_name="killed", output_uri={str(store)!r})
        torch.save({{"w": torch.randn(20_000_000)}}, {str(tmp_path / 'k.pt')!r})
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    out = run_script(script, env={"CLEARML_HOOKS_OFFLINE": offline})
    assert out.returncode == -signal.SIGKILL
    expected = (tmp_path / "k.pt").read_bytes()
    (tmp_path / "k.pt").unlink()  # the user's file is gone: the journal must have its bytes
    (journal,) = describe(str(store / "journal"))
    assert not journal.alive
    assert [r.header["src"] for r in journal.pending if r.header["t"] == "snap"] == [
        str(tmp_path / "k.pt")]
    # the next process to open the store (a new task) finishes it
    with Task.init(project_name="p", task_name="next", output_uri=str(store)) as task:
        task.flush(wait_for_uploads=True)
    (snap,) = _snapshots(_open(store))
    assert snap["state"] == "ready"
    assert _blob_bytes(_open(store), snap) == expected


def test_many_processes_write_one_store_at_once(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        from clearml_hooks import Task
        n = sys.argv[1]
        task = Task.init(project_name="p", task_name="worker-" + n, output_uri={str(store)!r})
        for i in range(15):
            torch.save({{"n": n, "i": i}}, {str(tmp_path)!r} + f"/w{{n}}-{{i % 5}}.pt")
        task.close()
        print("done", n)
    """))
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([sys.executable, str(script), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(8)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    for _stdout, stderr, code in results:
        assert code == 0, stderr
        assert "locked" not in stderr.lower()
    snaps = _snapshots(_open(store))
    assert len(snaps) == 8 * 15 and {s["state"] for s in snaps} == {"ready"}
    from sqlalchemy import func, select

    from clearml_hooks.store import schema as s

    with _open(store).catalog.read() as conn:
        assert conn.execute(select(func.count()).select_from(s.models)).scalar() == 8 * 5


def test_dataloader_workers_do_not_capture(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "loader.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from torch.utils.data import DataLoader, Dataset
        from clearml_hooks import Task

        class Saving(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                torch.save({{"i": i}}, {str(tmp_path)!r} + f"/worker-{{i}}.pt")
                return i

        task = Task.init(project_name="p", task_name="loader", output_uri={str(store)!r})
        list(DataLoader(Saving(), num_workers=2, multiprocessing_context="fork"))
        torch.save({{"main": 1}}, {str(tmp_path / 'main.pt')!r})
        task.flush(wait_for_uploads=True)
        print(sorted(m.source.rsplit("/", 1)[-1] for m in task.models["output"]))
    """))
    out = run_script(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['main.pt']"
    assert all((tmp_path / f"worker-{i}.pt").exists() for i in range(4))


@pytest.mark.parametrize(("env", "captured"), [
    ({"RANK": "1"}, False),
    ({"LOCAL_RANK": "2"}, False),
    ({"RANK": "0"}, True),
    ({"RANK": "1", "CLEARML_HOOKS_CAPTURE_ALL_RANKS": "1"}, True),
])
def test_only_rank_zero_captures(tmp_path, env, captured):
    store = tmp_path / "store"
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="rank", output_uri={str(store)!r})
        torch.save({{}}, {str(tmp_path / 'r.pt')!r})
        task.flush(wait_for_uploads=True)
        print(len(task.models["output"]))
    """))
    out = run_script(script, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == ("1" if captured else "0")


def test_torch_distributed_rank_is_respected(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "dist.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import torch, torch.distributed as dist
        import torch.multiprocessing as mp
        from clearml_hooks import Task

        def run(rank):
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
            dist.init_process_group("gloo", rank=rank, world_size=2)
            task = Task.init(project_name="p", task_name="ddp", output_uri={str(store)!r})
            torch.save({{"rank": rank}}, {str(tmp_path)!r} + f"/rank{{rank}}.pt")
            task.close()
            dist.destroy_process_group()

        if __name__ == "__main__":
            mp.spawn(run, nprocs=2)
    """))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # RANK is unset: only torch.distributed knows the rank
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK")}
    out = run_script(script, str(port), env=env)
    assert out.returncode == 0, out.stderr
    names = sorted(s["source_path"].rsplit("/", 1)[1] for s in _snapshots(_open(store)))
    assert names == ["rank0.pt"]


def test_file_on_another_filesystem_is_still_not_copied_in_the_training_thread(task):
    import tempfile

    task.wait_registered()
    if os.stat("/dev/shm").st_dev == os.stat(task.store.home).st_dev:
        pytest.fail("this test needs /dev/shm on another filesystem than the store")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        path = Path(other) / "m.pt"
        torch.save({"w": torch.arange(1000.0)}, path)
        first = path.read_bytes()
        torch.save({"w": torch.zeros(1000)}, path)
        assert task.capture_stats.get("staged_copy", 0) == 0
        task.flush(wait_for_uploads=True)
        (model,) = task.models["output"]
        assert Path(model.get_local_copy(version=1)).read_bytes() == first
        assert Path(model.get_local_copy(version=2)).read_bytes() == path.read_bytes()
        assert os.listdir(other) == ["m.pt"]  # the hidden staging folders are gone


def test_forked_child_captures_when_configured(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "fork.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="fork", output_uri={str(store)!r})
        torch.save({{"parent": 1}}, {str(tmp_path / 'parent.pt')!r})
        task.flush(wait_for_uploads=True)
        pid = os.fork()
        if pid == 0:
            torch.save({{"child": 1}}, {str(tmp_path / 'child.pt')!r})
            Task.current_task().flush(wait_for_uploads=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print(sorted(m.source.rsplit("/", 1)[-1] for m in task.models["output"]))
    """))
    out = run_script(script, env={"CLEARML_HOOKS_CAPTURE_IN_WORKERS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['child.pt', 'parent.pt']"
    out = run_script(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['parent.pt']"


def test_task_init_on_other_ranks_registers_no_second_task(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "ranked.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="ddp", output_uri={str(store)!r})
        torch.save({{}}, {str(tmp_path)!r} + "/m.pt")
        task.close()
    """))
    for rank in ("0", "1"):
        out = run_script(script, env={"RANK": rank, "LOCAL_RANK": rank})
        assert out.returncode == 0, out.stderr
    catalog = _open(store).catalog
    assert len(catalog.list_tasks()) == 1
    assert len(_snapshots(_open(store))) == 1


def test_forked_ddp_rank_zero_captures_and_other_ranks_do_not(tmp_path):
    """Lightning's ddp_fork: ranks are forked children that join the process group after."""
    store = tmp_path / "store"
    script = tmp_path / "ddp_fork.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import torch, torch.distributed as dist
        import torch.multiprocessing as mp
        from clearml_hooks import Task

        def run(rank, port):
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            dist.init_process_group("gloo", rank=rank, world_size=2)
            torch.save({{"rank": rank}}, {str(tmp_path)!r} + f"/rank{{rank}}.pt")
            Task.current_task().flush(wait_for_uploads=True)
            dist.destroy_process_group()

        if __name__ == "__main__":
            task = Task.init(project_name="p", task_name="ddp-fork", output_uri={str(store)!r})
            mp.start_processes(run, args=(sys.argv[1],), nprocs=2, start_method="fork")
            task.flush(wait_for_uploads=True)
            print(sorted(m.source.rsplit("/", 1)[-1] for m in task.models["output"]))
    """))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK")}
    out = run_script(script, str(port), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['rank0.pt']"


def test_recovery_removes_abandoned_staging_but_keeps_pending(tmp_path, monkeypatch):
    store_dir = tmp_path / "store"
    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    with Task.init(project_name="p", task_name="orphans", output_uri=str(store_dir)):
        torch.save({"w": torch.zeros(100_000)}, tmp_path / "pending.pt")  # linked, journaled
    staging = store_dir / "staging"
    orphan = staging / "deadhost-1-1"  # a process killed before it journaled anything
    (orphan / "abc").mkdir(parents=True)
    (orphan / "abc" / "m.pt").write_bytes(b"x")
    old = os.stat(orphan).st_mtime - 7200
    os.utime(orphan, (old, old))
    (pending_dir,) = [p for p in staging.iterdir() if p != orphan]
    os.utime(pending_dir, (old, old))
    monkeypatch.delenv("CLEARML_HOOKS_OFFLINE")
    result = recover(_open(store_dir))
    assert [i["outcome"] for i in result.items] == ["ready"]
    assert list(staging.iterdir()) == []  # the orphan, and the stored snapshot's staging


def test_an_older_catalog_gets_indexes_added_later(tmp_path):
    import sqlite3

    store_dir = tmp_path / "store"
    _open(store_dir).wait()
    db = sqlite3.connect(store_dir / "catalog.db")
    db.execute("DROP INDEX ix_models_updated")
    db.execute("DROP TABLE alembic_version")  # a catalog from before schema migrations
    db.commit()
    db.close()
    from clearml_hooks.store.catalog import SqlCatalog

    SqlCatalog("sqlite:///" + str(store_dir / "catalog.db"))
    db = sqlite3.connect(store_dir / "catalog.db")
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "ix_models_updated" in names
