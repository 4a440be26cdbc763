"""A store mounted read-only (a registry in a serving or CI container) is still read."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")


@pytest.fixture
def read_only_store(tmp_path):
    """A store with one captured model, then a read-only bind mount of it: (mount, source)."""
    source, mnt = tmp_path / "store", tmp_path / "mnt"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="t", output_uri={str(source)!r})
        torch.save({{"w": torch.arange(5)}}, {str(tmp_path / "final.pt")!r})
    """))
    out = run_script(script)
    assert out.returncode == 0, out.stderr
    mnt.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(mnt)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], check=True)
        yield mnt, source
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


READ = """
    import json, os
    from clearml_hooks import Model
    (model,) = Model.query_models(project_name="p")
    path = model.get_local_copy(raise_on_error=True)
    try:
        model.publish()
        refused = ""
    except Exception as exc:
        refused = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"path": path, "bytes": open(path, "rb").read().hex(), "refused": refused}))
"""


@pytest.mark.parametrize("wal_index", ["left by the writer", "removed (closed cleanly)"])
def test_a_read_only_store_is_queried_and_downloaded_and_not_changed(read_only_store, tmp_path,
                                                                     wal_index):
    mnt, source = read_only_store
    if wal_index.startswith("removed"):
        subprocess.run(["umount", "-l", str(mnt)], check=True)
        import sqlite3

        with sqlite3.connect(source / "catalog.db") as conn:  # what the last writer leaves
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for suffix in ("-shm", "-wal"):
            if (source / f"catalog.db{suffix}").exists():
                os.unlink(source / f"catalog.db{suffix}")
        subprocess.run(["mount", "--bind", str(source), str(mnt)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], check=True)
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    script = tmp_path / "read.py"
    script.write_text(textwrap.dedent(READ))
    cache = tmp_path / "user-cache"
    out = run_script(script, env={"CLEARML_HOOKS_HOME": str(mnt), "XDG_CACHE_HOME": str(cache)})
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert bytes.fromhex(result["bytes"]) == (tmp_path / "final.pt").read_bytes()
    assert result["path"].startswith(str(cache))  # the store's own cache folder is read-only
    assert "read-only" in result["refused"] and "cannot change the catalog" in result["refused"]
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before
