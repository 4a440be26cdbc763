"""An adversary for the rewritten training-thread hot path (capture.Capturer.saved,
snapshot_lines.SnapshotLines, journal.new_id, staging.open_regular/read_inline).

Real threads, real forks, real kill -9s and real files; every check is one the capture contract
promises: exactly the saved bytes or a loud failure, no user file changed, nothing journaled lost.
What they caught, since fixed: a file name that is not UTF-8 left its snapshot pending forever;
a fork while the worker was importing hung the child's worker; a path gone (or a symlink loop)
before the hook read it was an agent error instead of a failed snapshot; env_rank ignored the
rank when the environment was empty at import.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.faults._util import (
    check_snapshots,
    env_for,
    events,
    open_catalog,
    snapshots,
    status,
    sync,
    write_script,
)


def _init(store_dir: Path, project: str):
    from clearml_hooks import Task

    return Task.init(project_name=project, task_name="adversary", output_uri=str(store_dir),
                     auto_connect_frameworks={"pytorch": "*"})


def _agent_errors() -> int:
    """The process-wide count of agent errors (capture_stats reports the same counter)."""
    from clearml_hooks.hooks import contract

    return contract.error_count()


def _journal_snaps(task) -> list:
    from clearml_hooks.store.journal import read_records

    records, _done = read_records(task.store.journal.dir)
    return [r for r in records if r.header.get("t") == "snap"]


def _versions_by_source(project: str) -> dict[str, list[bytes]]:
    """Every stored version of every model of ``project``, by source path, oldest first."""
    from clearml_hooks import Model

    out: dict[str, list[bytes]] = {}
    for model in Model.query_models(project_name=project):
        for snap in model.snapshots:
            assert snap["state"] == "ready", (model.source, snap)
            path = model.get_local_copy(version=snap["version"], raise_on_error=True)
            out.setdefault(model.source, []).append(Path(path).read_bytes())
    return out


# -- many threads saving at once ------------------------------------------------------------------

def test_threads_saving_concurrently_get_unique_ids_and_exact_bytes(tmp_path):
    """8 threads, each saving its own paths (inline, at the 64 KiB edge, and linked) 25 times:
    every record id is unique and every version holds exactly the bytes of its save, in order."""
    import torch

    work = tmp_path / "work"
    work.mkdir()
    task = _init(tmp_path / "store", "threads")
    agent_errors = _agent_errors()
    saved: dict[str, list[bytes]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for k in range(25):
                path = str(work / f"t{t}-{k % 3}.pt")
                n = [16, 16_000, 20_000][k % 3]  # ~1 KiB, ~64 KiB (either side), ~80 KiB
                torch.save({"t": torch.tensor(t), "w": torch.full((n,), t * 1000 + k,
                                                                   dtype=torch.int32)}, path)
                data = Path(path).read_bytes()
                with lock:
                    saved.setdefault(path, []).append(data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    rids = [r.rid for r in _journal_snaps(task)]
    assert len(rids) == 200 and len(set(rids)) == 200, (len(rids), len(set(rids)))
    assert task.flush(wait_for_uploads=True, timeout=60)
    assert _agent_errors() == agent_errors
    stored = _versions_by_source("threads")
    assert stored.keys() == saved.keys()
    for path, versions in saved.items():
        assert stored[path] == versions, f"{path}: stored versions differ from the saves"
    task.close()


# -- awkward names ----------------------------------------------------------------------------------

AWKWARD = ['new\nline.pt', 'q"uo\'te.pt', 'back\\slash.pt', 'C:drive.pt', 'tab\there.pt',
           '\u00e9\u4e2d\U0001f600.pt', 'ctl\x01\x1f.pt', '{"t":"done"}.pt', 'x' * 240 + '.pt']


def test_awkward_names_journal_as_the_same_header_and_read_back(tmp_path):
    """Inline and linked saves of awkward file names: each journal line decodes to a header
    naming exactly the saved path, and get_local_copy gives the saved bytes under that name."""
    import torch

    work = tmp_path / "work"
    work.mkdir()
    task = _init(tmp_path / "store", "names")
    saved = {}
    for i, name in enumerate(AWKWARD):
        for n in (8, 20_000):  # inline, then staged (link or copy)
            path = os.path.join(str(work), f"{n}-{name}")
            torch.save({"w": torch.full((n,), i, dtype=torch.int32)}, path)
            saved[path] = Path(path).read_bytes()
    snaps = _journal_snaps(task)
    assert sorted(r.header["src"] for r in snaps) == sorted(saved)
    for r in snaps:
        h = r.header
        assert h["name"] == os.path.basename(h["src"]) == h["files"][0]["rel"], h
        assert h["src_size"] == h["files"][0]["size"] == len(saved[h["src"]]), h
        assert h["task"] == task.id and h["kind"] == "file", h
        if h["files"][0]["how"] == "inline":
            assert r.payload() == saved[h["src"]]
    assert task.flush(wait_for_uploads=True, timeout=60)
    from clearml_hooks import Model

    models = Model.query_models(project_name="names")
    assert sorted(m.source for m in models) == sorted(saved)
    for m in models:
        local = m.get_local_copy(raise_on_error=True)
        assert os.path.basename(local) == os.path.basename(m.source)
        assert Path(local).read_bytes() == saved[m.source]
    task.close()


def test_non_utf8_file_name_ends_ready_or_failed(tmp_path):
    import torch

    from tests.faults._util import sync as cli_sync

    work = tmp_path / "work"
    work.mkdir()
    home = tmp_path / "store"
    task = _init(home, "nonutf8")
    path = os.path.join(str(work), os.fsdecode(b"bad\xff\xfe-name.pt"))
    torch.save({"w": torch.arange(10)}, path)
    with open(path, "rb") as f:
        data = f.read()
    (rec,) = _journal_snaps(task)
    assert rec.header["src"] == path and rec.payload() == data  # the journal itself is right
    task.flush(wait_for_uploads=True, timeout=30)
    task.close()
    result = cli_sync(home)
    assert not result["errors"], result["errors"]
    snaps = snapshots(open_catalog(home))
    assert len(snaps) == 1, snaps
    counts = check_snapshots(snaps, home / "blobs", read_value=None)
    if counts["ready"]:
        from clearml_hooks.store.blobs import LocalBlobStore

        blob = LocalBlobStore(str(home / "blobs")).path_for(snaps[0]["files"][0]["sha256"])
        assert Path(blob).read_bytes() == data


# -- iterations of every type -------------------------------------------------------------------

def test_iterations_of_odd_types_are_journaled_as_plain_ints(tmp_path):
    import numpy as np
    import torch

    work = tmp_path / "work"
    work.mkdir()
    task = _init(tmp_path / "store", "iters")
    given = [np.int64(5), np.uint8(7), True, 7.9, -3, 2**63 - 1, -(2**63), torch.tensor(11), 0]
    for i, value in enumerate(given):
        task.set_last_iteration(value)
        torch.save({"w": torch.full((8 if i % 2 else 20_000,), i)}, str(work / f"it{i}.pt"))
    with pytest.raises(ValueError):
        task.set_last_iteration(2**63)  # documented: iterations fit in 64 bits
    snaps = sorted(_journal_snaps(task), key=lambda r: r.header["src"])
    by_src = {r.header["src"]: r.header["it"] for r in snaps}
    for i, value in enumerate(given):
        it = by_src[str(work / f"it{i}.pt")]
        assert type(it) is int and it == int(value), (value, it)
    assert task.flush(wait_for_uploads=True, timeout=60)
    from clearml_hooks import Model

    got = {m.source: m.snapshots[0] for m in Model.query_models(project_name="iters")}
    for i, value in enumerate(given):
        snap = got[str(work / f"it{i}.pt")]
        assert snap["state"] == "ready" and snap["iteration"] == int(value), snap
    task.close()


# -- the saved path is not a regular file by the time the hook reads it ---------------------------

def _replace(path: str, kind: str) -> None:
    os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "loop":
        os.symlink(path, path)
    elif kind == "dangling":
        os.symlink(path + ".missing", path)
    # "gone": nothing there any more


def _save_into_replaced(tmp_path, kind: str, n: int) -> str:
    """torch.save through a file object whose path was replaced meanwhile (the write goes to
    the unlinked inode; the hook then finds ``kind`` at the path)."""
    import torch

    path = str(tmp_path / f"{kind}-{n}.pt")
    with open(path, "wb") as f:
        _replace(path, kind)
        torch.save({"w": torch.zeros(n)}, f)
    return path


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_path_replaced_by_fifo_or_dir_fails_loudly_and_is_untouched(tmp_path, kind):
    task = _init(tmp_path / "store", "replaced")
    errors = _agent_errors()
    t0 = time.monotonic()
    paths = [_save_into_replaced(tmp_path, kind, n) for n in (8, 20_000)]
    assert time.monotonic() - t0 < 10  # a FIFO never blocks the save
    assert task.flush(wait_for_uploads=True, timeout=30)
    from clearml_hooks import Model

    models = {m.source: m for m in Model.query_models(project_name="replaced")}
    for path in paths:
        (snap,) = models[path].snapshots
        assert snap["state"] == "failed" and "not a regular file" in snap["error"], snap
        mode = os.lstat(path).st_mode
        assert (os.path.stat.S_ISFIFO(mode) if kind == "fifo" else os.path.stat.S_ISDIR(mode))
    if kind == "dir":
        assert all(not os.listdir(p) for p in paths)
    assert _agent_errors() == errors
    task.close()


@pytest.mark.parametrize("kind", ["gone", "loop"])
def test_path_deleted_or_looping_is_a_failed_snapshot_not_an_agent_error(tmp_path, kind,
                                                                         monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_STRICT", "0")
    task = _init(tmp_path / "store", "vanished")
    errors = _agent_errors()
    paths = [_save_into_replaced(tmp_path, kind, n) for n in (8, 20_000)]  # never raises
    assert _agent_errors() == errors, dict(task.capture_stats)
    assert task.flush(wait_for_uploads=True, timeout=30)
    from clearml_hooks import Model

    models = {m.source: m for m in Model.query_models(project_name="vanished")}
    for path in paths:
        (snap,) = models[path].snapshots
        assert snap["state"] == "failed" and snap["error"], snap
    task.close()


# -- one path, saves either side of inline_max, and plain in-place writes in between ----------------

def test_sizes_across_inline_max_with_inplace_writes_between_saves(tmp_path):
    """One path saved 60 times at sizes either side of 64 KiB (inline, link, copy), with a plain
    in-place write of it (not hooked: ``open(p, "r+b")``) after some saves: each snapshot holds
    exactly the bytes of its save, or fails saying it was rewritten; nothing else."""
    import torch

    work = tmp_path / "work"
    work.mkdir()
    task = _init(tmp_path / "store", "sizes")
    path = str(work / "m.pt")
    rng = random.Random(11)
    saved: dict[int, bytes] = {}
    for k in range(1, 61):
        task.set_last_iteration(k)
        n = rng.choice([16, 15_900, 16_100, 16_384, 30_000])  # ~64 KiB +- a few hundred bytes
        torch.save({"k": torch.tensor(k), "w": torch.full((n,), k, dtype=torch.int32)}, path)
        saved[k] = Path(path).read_bytes()
        if k % 4 == 0:  # another writer: same size, in place, right after the save
            with open(path, "r+b") as f:
                f.seek(len(saved[k]) // 2)
                f.write(b"\xff" * 64)
    last = Path(path).read_bytes()
    assert task.flush(wait_for_uploads=True, timeout=60)
    from clearml_hooks import Model

    (model,) = Model.query_models(project_name="sizes")
    snaps = model.snapshots
    assert sorted(s["iteration"] for s in snaps) == list(range(1, 61))
    ready = 0
    for snap in snaps:
        if snap["state"] != "ready":
            assert snap["state"] == "failed" and "rewritten" in snap["error"], snap
            assert snap["iteration"] % 4 == 0, f"save {snap['iteration']} failed: {snap}"
            continue
        got = Path(model.get_local_copy(version=snap["version"], raise_on_error=True)).read_bytes()
        assert got == saved[snap["iteration"]], f"save {snap['iteration']} stored other bytes"
        ready += 1
    assert ready >= 45, ready  # every save not followed by a plain write is stored exactly
    assert Path(path).read_bytes() == last  # the agent never wrote the user's file
    task.close()


# -- fork in the middle of a save loop ------------------------------------------------------------

FORK_LOOP = """
    task = Task.init(project_name="fork", task_name="loop", output_uri=os.environ["STORE"])
    who, child, saved = "parent", 0, []
    for k in range(1, 41):
        if k == 15:
            assert task.flush(wait_for_uploads=True, timeout=30)
            child = os.fork()
            who = "child" if child == 0 else "parent"
        it = k + (1000 if who == "child" else 0)
        task.set_last_iteration(it)
        torch.save(state(it, 0.0001 if k % 2 else 0.07), f"{who}-{k % 3}.pt")
        saved.append(it)
    ok = task.flush(wait_for_uploads=True, timeout=30)
    with open(f"{who}.json", "w") as f:  # one file per process: stdout lines may interleave
        json.dump({"saved": saved, "flushed": ok, "journal": task.store.journal.dir}, f)
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
"""


def _run_forking(z, tmp_path: Path, body: str):
    """Run a script that forks capturing children: (store, work folder, finished process)."""
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), CLEARML_HOOKS_CAPTURE_IN_WORKERS="1")
    proc = z.run(write_script(tmp_path, body), env, work, timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return home, work, proc


def test_fork_mid_save_loop_keeps_every_save_with_distinct_ids(z, tmp_path):
    from clearml_hooks.store.journal import read_records

    home, work, proc = _run_forking(z, tmp_path, FORK_LOOP)
    parent = json.loads((work / "parent.json").read_text())
    child = json.loads((work / "child.json").read_text())
    saved = set(parent["saved"]) | set(child["saved"])
    assert saved == set(range(1, 41)) | set(range(1015, 1041)), sorted(saved)
    assert parent["flushed"] and child["flushed"], (parent, child)
    assert parent["journal"] != child["journal"]
    rids: list[str] = []
    for e in (parent, child):  # each journal is readable (it may be removed once drained)
        records, _done = read_records(e["journal"])
        rids += [r.rid for r in records if r.header.get("t") == "snap"]
    assert len(rids) == len(set(rids))
    sync(home)
    snaps = snapshots(open_catalog(home))
    assert len({s["id"] for s in snaps}) == len(snaps)
    assert sorted(s["iteration"] for s in snaps) == sorted(saved)
    counts = check_snapshots(snaps, home / "blobs")
    assert counts["ready"] == len(saved), counts
    assert status(home)["pending_snapshots"] == 0


FORK_DURING_IMPORT = """
    import importlib._bootstrap as bootstrap, threading
    task = Task.init(project_name="fork", task_name="import", output_uri=os.environ["STORE"])
    torch.save(state(1, 0.0001), "first.pt")  # starts the worker, which imports the catalog
    main = threading.get_ident()

    def importing():  # a module lock held by another thread: the worker is importing
        for ref in list(bootstrap._module_locks.values()):
            lock = ref()
            if lock is not None and getattr(lock, "owner", None) not in (None, 0, main):
                return True
        return False

    deadline = time.monotonic() + 5
    while not importing() and time.monotonic() < deadline:
        time.sleep(0.0005)
    emit(importing=importing())
    child = os.fork()
    if child == 0:
        task.set_last_iteration(2)
        torch.save(state(2, 0.0001), "child.pt")
        ok = task.flush(wait_for_uploads=True, timeout=8)
        emit(child_flushed=ok)
        os._exit(0 if ok else 3)
    end = time.monotonic() + 15
    while time.monotonic() < end:
        pid, st = os.waitpid(child, os.WNOHANG)
        if pid:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        emit(child_killed=True)
    emit(parent_flushed=task.flush(wait_for_uploads=True, timeout=30))
"""


def test_fork_while_the_worker_imports_does_not_hang_the_child(z, tmp_path):
    home, work, proc = _run_forking(z, tmp_path, FORK_DURING_IMPORT)
    evs = events(proc.stdout)
    assert {"importing": True} in evs, evs  # the fork did happen mid-import
    assert {"child_flushed": True} in evs, evs
    # nothing lost either way: sync finishes what the child left
    sync(home)
    counts = check_snapshots(snapshots(open_catalog(home)), home / "blobs")
    assert counts == {"ready": 2, "failed": 0}, counts


# -- kill -9 during a burst of small saves --------------------------------------------------------

BURST = """
    import random
    run = int(os.environ["RUN"])
    rng = random.Random(run)
    task = Task.init(project_name="burst", task_name=f"run{run}", output_uri=os.environ["STORE"])
    names = ["a.pt", "new\\nline.pt", 'q"b\\\\s.pt', "C:x.pt", "\\u00e9.pt"]
    i = 0
    while True:
        i += 1
        it = run * 100000 + i
        task.set_last_iteration(it)
        mb = rng.choice([0.0001, 0.06, 0.0624, 0.0626, 0.07])  # both sides of 64 KiB
        torch.save(state(it, mb), os.path.abspath(names[i % len(names)]))
        emit(saved=it)
"""


def test_kill9_during_bursts_of_small_saves_then_sync(z, tmp_path):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    script = write_script(tmp_path, BURST)
    rng = random.Random(4242)
    saved: set[int] = set()
    for run in range(1, 6):
        env = env_for(home, STORE=str(home), RUN=str(run))
        key, pid, out = z.start(script, env, work)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
                not out.exists() or out.read_text().count("saved") < 3):
            time.sleep(0.02)
        if not out.exists() or out.read_text().count("saved") < 3:
            stuck = z.stacks(pid, out)
            os.kill(pid, signal.SIGKILL)
            z.wait(key, 30)
            pytest.fail(f"run {run} saved fewer than 3 times in 20 s; its threads:\n{stuck[-6000:]}")
        time.sleep(rng.uniform(0.0, 0.8))
        os.kill(pid, signal.SIGKILL)
        assert z.wait(key, 30) == -9, out.read_text()[-2000:]
        got = {e["saved"] for e in events(out.read_text()) if "saved" in e}
        assert got, out.read_text()[-2000:]
        saved |= got
        out.unlink()
    user_files = {p.name: p.read_bytes() for p in work.iterdir()}
    result = sync(home)
    assert not result["errors"], result
    snaps = snapshots(open_catalog(home))
    by_it = {s["iteration"]: s for s in snaps}
    lost = saved - by_it.keys()
    assert not lost, f"saves seen returning but never journaled: {sorted(lost)[:10]}"
    counts = check_snapshots(snaps, home / "blobs")  # ready: exactly its save's bytes
    # failed only as documented: a linked (> 64 KiB) snapshot pending at the kill whose file the
    # next run rewrote in place ("the resumed run after a crash"); a small save is always stored
    for snap in snaps:
        if snap["state"] == "failed":
            assert "rewritten in place" in snap["error"], snap
            assert snap["files"] and snap["files"][0]["size"] > 64 << 10, snap
    assert counts["ready"] >= len(saved) // 2, counts
    assert {p.name: p.read_bytes() for p in work.iterdir()} == user_files
    assert status(home)["pending_snapshots"] == 0
    json.dumps(counts)


# -- the encoder itself --------------------------------------------------------------------------

@pytest.mark.parametrize("src", [
    "/w/" + os.fsdecode(b"\xff\xfe\x80.pt"), "/w/new\nline.pt", '/w/q"\\.pt', "/w/\u2028\u2029.pt",
    "/w/\U0001f600\udcff.pt", "/w/" + "n" * 4000 + ".pt", "/w/\x00\x7f.pt"])
@pytest.mark.parametrize("iteration", [None, 0, -1, 2**63 - 1, -(2**63), 10**30])
def test_snapshot_line_decodes_to_its_header(src, iteration):
    from clearml_hooks.store.snapshot_lines import SnapshotLines

    lines = SnapshotLines("task\u00e9\"id")
    for fields in [
        ("0123abcd" * 4, src, os.path.basename(src), "PyTorch", iteration, 1.5e9 + 0.1, 65536,
         2**62 + 1),
        ("ffff" * 8, src, os.path.basename(src), None, iteration, 0.0, 1 << 40, 0, "link",
         src + ".staged\n", [2**63, 1 << 40, 7], [src + ".staging"]),
    ]:
        for _ in range(2):  # the second time from the cached prefix
            line = lines.line(*fields)
            assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
            assert json.loads(line) == lines.header(*fields)


# -- rank variables -------------------------------------------------------------------------------

RANK_AFTER_EMPTY_ENV = """
import os, sys
sys.path.insert(0, sys.argv[1])
saved = dict(os.environ)
os.environ.clear()  # a launcher that builds the environment from scratch, in-process
from clearml_hooks.hooks import process
os.environ.update(saved)
os.environ["RANK"] = "1"
print(process.env_rank(), process.capture_allowed())
"""


def test_rank_is_read_even_if_the_environment_was_empty_at_import(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run([sys.executable, "-c", RANK_AFTER_EMPTY_ENV, str(REPO)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "False"], proc.stdout
