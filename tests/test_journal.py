"""The training thread's hot path writes journal records that read back exactly.

A captured small save is journaled by a fast path (its own header, a line encoded without
``json.dumps``, ids without a system call); these tests hold it to what the general path and
``json`` would have written.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from clearml_hooks import Model, Task
from clearml_hooks.hooks import process
from clearml_hooks.store.journal import new_id, read_records
from clearml_hooks.store.snapshot_lines import SnapshotLines

AWKWARD = ['plain.pt', 'quo"te.pt', 'back\\slash.pt', 'new\nline.pt', 'tab\t.pt', 'é ü 模型.pt',
           '\x01ctrl.pt', 'emoji-🙂.pt', '\u2028sep.pt']


STAGED = [("inline", None, None, None),
          ("link", "/store/staging/o/{rid}", [12345, 1234, 1764520000123456789],
           ["/store/staging/o/{rid}"]),
          ("copy", "/data/.clearml-hooks-staging-{rid}/{name}", None,
           ["/data/.clearml-hooks-staging-{rid}"]),
          ("reflink", "/store/staging/o/{rid}", None, ["/store/staging/o/{rid}"])]


@pytest.mark.parametrize("name", AWKWARD)
@pytest.mark.parametrize("iteration", [None, 0, 7, 10**15])
@pytest.mark.parametrize("how,staged,ident,staging", STAGED)
def test_a_snapshot_line_decodes_to_its_header(name, iteration, how, staged, ident, staging):
    lines = SnapshotLines('task"\\x')
    rid = new_id()
    staged = staged and staged.format(rid=rid, name=name)
    staging = staging and [f.format(rid=rid) for f in staging]
    fields = (rid, f"/data/{name}", name, "PyTorch", iteration, 1764520000.123456, 1234,
              1764520000123456789, how, staged, ident, staging)
    line = lines.line(*fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one record, one line
    header = lines.header(*fields)
    assert json.loads(line) == header
    assert header["n"] == (1234 if how == "inline" else 0)
    assert lines.line(*fields) == line  # the cached fixed part gives the same line again


def test_record_ids_are_unique_and_a_forked_child_makes_its_own():
    ids = {new_id() for _ in range(10000)}
    assert len(ids) == 10000 and all(len(i) == 32 and i.isalnum() for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids share nothing with the parent's
        os.close(read)
        os.write(write, "\n".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    child = set()
    with os.fdopen(read) as f:
        child = set(f.read().split("\n"))
    os.waitpid(pid, 0)
    assert len(child) == 100
    assert not child & ids
    assert {i[:16] for i in child} != {i[:16] for i in ids}


@pytest.mark.parametrize("name", ["final.pt", 'final "quoted" \\ é.pt', "final\nnewline.pt"])
def test_a_captured_small_save_is_journaled_and_stored_exactly(tmp_path, name):
    store = tmp_path / "store"
    task = Task.init(project_name="p", task_name="hot path", output_uri=str(store),
                     auto_connect_frameworks={"pytorch": "final*"})
    task.set_last_iteration(np.int64(41))  # a NumPy integer: journaled as a plain int
    path = tmp_path / name
    torch.save({"w": torch.arange(10)}, path)
    saved = path.read_bytes()
    records, _done = read_records(task.store.journal.dir)
    (snap,) = [r for r in records if r.header["t"] == "snap"]
    assert snap.header["src"] == str(path) and snap.header["it"] == 41
    assert snap.header["files"] == [{"size": len(saved), "how": "inline", "rel": name}]
    assert snap.payload() == saved
    assert task.flush(wait_for_uploads=True)
    (model,) = Model.query_models(project_name="p")
    assert open(model.get_local_copy(), "rb").read() == saved
    task.close()


def test_a_captured_large_save_is_journaled_and_stored_exactly(tmp_path):
    """A file too big to go inline is staged (link, reflink or copy) and its record written
    by the same encoder: read back, it names the staged file, and the stored bytes are the
    saved ones even after the file is saved again in place."""
    store = tmp_path / "store"
    task = Task.init(project_name="p", task_name="large", output_uri=str(store),
                     auto_connect_frameworks={"pytorch": "final*"})
    path = tmp_path / "final.pt"
    torch.save({"w": torch.arange(100_000)}, path)
    first = path.read_bytes()
    torch.save({"w": torch.arange(100_000) * 2}, path)  # the same size, rewritten through a hook
    second = path.read_bytes()
    records, _done = read_records(task.store.journal.dir)
    snaps = [r.header for r in records if r.header["t"] == "snap"]
    assert [s["files"][0]["how"] in ("link", "reflink", "copy") for s in snaps] == [True, True]
    assert all(s["staging"] and s["files"][0]["path"] and s["n"] == 0 for s in snaps)
    assert task.flush(wait_for_uploads=True)
    (model,) = Model.query_models(project_name="p")
    assert [open(model.get_local_copy(version=v), "rb").read() for v in (1, 2)] == [first, second]
    task.close()


def test_the_launchers_rank_is_read_when_the_save_happens(monkeypatch):
    """The rank variables are read on every call, not once: a launcher may set them late."""
    for name in ("RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert process.env_rank() == 0 and process.capture_allowed()
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert process.env_rank() == 3 and not process.capture_allowed()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert process.env_rank() == 0 and process.capture_allowed()
    monkeypatch.setenv("LOCAL_RANK", " junk")
    assert process.env_rank() == 0


@pytest.mark.skipif(sys.platform != "linux", reason="FIFOs and /proc are POSIX")
def test_a_fifo_save_is_skipped_and_later_saves_are_captured(tmp_path):
    store = tmp_path / "store"
    task = Task.init(project_name="p", task_name="fifo", output_uri=str(store))
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    from clearml_hooks.hooks.binding import Location

    task.capturer.saved(None, Location(str(fifo)), "PyTorch")  # never blocks, never raises
    torch.save({"w": torch.zeros(3)}, tmp_path / "final.pt")
    assert task.flush(wait_for_uploads=True)
    (model,) = Model.query_models(project_name="p", model_name="fifo - final")
    assert open(model.get_local_copy(), "rb").read() == (tmp_path / "final.pt").read_bytes()
    assert task.capture_stats["not_staged"] == 1  # the FIFO: said so, stored nothing
    task.close()


def test_capture_stats_count_this_tasks_agent_errors_only(tmp_path, monkeypatch):
    """An agent error of an earlier task in the process is not counted again by the next."""
    from clearml_hooks.hooks import contract

    monkeypatch.setenv("CLEARML_HOOKS_STRICT", "0")
    first = Task.init(project_name="p", task_name="one", output_uri=str(tmp_path / "s1"))
    try:
        raise RuntimeError("an agent failure")
    except RuntimeError:
        contract.agent_error("test: a hook")
    assert first.capture_stats["agent_errors"] == 1
    first.close()
    second = Task.init(project_name="p", task_name="two", output_uri=str(tmp_path / "s2"))
    assert second.capture_stats["agent_errors"] == 0
    second.close()


def test_free_space_seen_recently_never_decides_a_refusal_or_a_copy(tmp_path):
    """A link may trust a statvfs under a second old that showed room (it takes no data
    blocks); a refusal, and a copy, always look again: a reserve raised past the free space
    refuses at once, even right after a save that found room."""
    from clearml_hooks.store import staging

    src = tmp_path / "model.pt"
    src.write_bytes(os.urandom(200_000))
    folder = tmp_path / "staging"
    folder.mkdir()

    def stage(name: str, *, min_free: int, force_copy: bool = False):
        return staging.stage_file(str(src), lambda st: str(folder / name), inline_max=1024,
                                  force_copy=force_copy, min_free=min_free)

    entry, _ = stage("a", min_free=0)
    assert entry["how"] in ("link", "reflink")
    free = staging.free_bytes(str(folder))
    assert free is not None
    for force_copy in (False, True):
        with pytest.raises(staging.NotStaged, match="staging_min_free"):
            stage(f"b{force_copy}", min_free=free + (1 << 30), force_copy=force_copy)
        assert not (folder / f"b{force_copy}").exists()
    entry, _ = stage("c", min_free=0, force_copy=True)
    assert entry["how"] in ("copy", "reflink")
    assert (folder / "c").read_bytes() == src.read_bytes()
