"""An adversary for the link-first hot path (capture.Capturer._journal_link_first,
staging.link_first), the pid kept by an at-fork hook (store/forks.py) and the worker's liveness
flag.

Real files, real processes, real forks and kill -9s, then ``clearml-hooks sync``: every snapshot
is ready with exactly the bytes of its save or failed with a reason, the user's files are what
the user wrote, nothing is left pending.

What they found (each fixed, and kept as the test below):

- a path replaced by a *relative* symlink is linked first as the symlink itself (``os.link``
  does not follow it), and ``os.stat`` of our link resolves it from the staging folder: the
  snapshot is stored, ready, with the bytes of another file;
- the staging folder removed behind the agent: every later save of a large file is an agent
  error and no snapshot at all;
- Task.close() then Task.init() in the same process: the new task's hooked save of the path
  rewrites the old task's pending link in place (its snapshot fails) instead of copying it first;
- a hooked save right after the worker removed a stored snapshot's link (before it told the
  capturer) is taken for an in-place rewrite: a false warning, ``snapshots_overwritten``, and the
  path is copied from then on.

The fixes: ``link_first`` lstat()s its own link; ``Capturer._stage`` makes the staging folder
again; pending links are kept per process (``store/pending_links.py``); ``make_private`` says
GONE, not a rewrite, when the worker removed the link already.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.faults._inproc import (
    agent_errors,
    init_task,
    snapshots_by_source,
    stored_value,
    tensor_state,
)
from tests.faults._util import (
    assert_drained,
    env_for,
    events,
    mounted_tmpfs,
    open_catalog,
    snapshots,
    sync,
    torch_value,
    wait_for,
    write_script,
)

# -- the user's path replaced between saves -------------------------------------------------------

@pytest.mark.parametrize("kind", ["atomic-replace", "absolute-symlink", "symlink-to-dev-shm",
                                  "renamed-away"])
def test_path_replaced_between_linked_saves(tmp_path, monkeypatch, kind):
    """last.pt is saved twice (the second is linked first), then replaced behind the hooks
    (os.replace of a new file, a symlink to a file elsewhere, to one on /dev/shm, or renamed
    away), then saved again twice: every snapshot holds exactly its save; no user file the
    agent did not write changed."""
    import torch

    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    shm = Path("/dev/shm") / f"clearml-hooks-adv-{os.getpid()}-{kind}.pt"
    if kind == "symlink-to-dev-shm" and (not Path("/dev/shm").is_dir() or os.stat(
            "/dev/shm").st_dev == os.stat(work).st_dev):
        pytest.skip("needs /dev/shm on another filesystem")
    task = init_task(home, kind)
    errors = agent_errors()
    p = work / "last.pt"
    try:
        for i in (1, 2):
            task.set_last_iteration(i)
            torch.save(tensor_state(i), p)
        kept = None
        if kind == "atomic-replace":  # torch.save(tmp) (hooked) then os.replace (not hooked)
            task.set_last_iteration(3)
            torch.save(tensor_state(3), work / "tmp.pt")
            os.replace(work / "tmp.pt", p)
        elif kind == "absolute-symlink":
            target = work / "elsewhere.pt"
            shutil.copyfile(p, target)
            os.symlink(str(target), str(p) + ".new")
            os.replace(str(p) + ".new", p)
            kept = target
        elif kind == "symlink-to-dev-shm":
            shutil.copyfile(p, shm)
            os.symlink(str(shm), str(p) + ".new")
            os.replace(str(p) + ".new", p)
            kept = shm
        else:  # renamed away: the old inode lives on under another name, a new file comes
            os.rename(p, work / "kept.pt")
        for i in (4, 5):
            task.set_last_iteration(i)
            torch.save(tensor_state(i), p)
        stats = dict(task.capture_stats)
        assert agent_errors() == errors, stats
        task.close()
        assert torch_value(p) == 5
        if kept is not None:
            assert torch_value(kept) == 5  # written through the symlink, by the user's save
        if kind == "renamed-away":
            assert torch_value(work / "kept.pt") == 2
        by_src = snapshots_by_source(home)
        last = by_src[str(p)]
        assert sorted(last) == [1, 2, 4, 5], last
        for i in (1, 2, 4, 5):  # hooked saves: every one kept, with its own bytes
            assert last[i]["state"] == "ready", last[i]
            assert stored_value(home, last[i]) == i
    finally:
        shm.unlink(missing_ok=True)


def test_relative_symlink_is_never_stored_with_another_files_bytes(tmp_path, monkeypatch):
    """last.pt, linked first from its second save on, becomes a relative symlink
    ``../../m.pt``. From the user's folder it names the checkpoint the next save writes; from
    the staging folder (same depth) it names another file. The snapshot must hold the save's
    bytes (or fail), never the other file's."""
    import torch

    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home = tmp_path / "store"
    work = tmp_path / "w" / "a" / "b"
    work.mkdir(parents=True)
    task = init_task(home, "relative-symlink")
    staging_dir = Path(task.store.staging_dir)
    other = Path(os.path.normpath(staging_dir / ".." / ".." / "m.pt"))
    real = Path(os.path.normpath(work / ".." / ".." / "m.pt"))
    assert other != real
    data = _serialized(7)
    other.write_bytes(data)  # not hooked: plain writes
    p = work / "last.pt"
    for i in (1, 2):
        task.set_last_iteration(i)
        torch.save(tensor_state(i), p)
    os.symlink("../../m.pt", str(p) + ".new")
    os.replace(str(p) + ".new", p)
    task.set_last_iteration(3)
    torch.save(tensor_state(3), p)  # writes `real` through the symlink
    task.close()
    assert torch_value(real) == 3 and other.read_bytes() == data
    sync(home)
    snaps = {s["iteration"]: s for s in snapshots(open_catalog(home))}
    assert_drained(home)
    snap = snaps[3]
    assert snap["state"] == "failed" or stored_value(home, snap) == 3, (
        f"snapshot 3 of {p} is ready with the bytes of save {stored_value(home, snap)} "
        f"(the file {other}), not 3")


def _serialized(i: int) -> bytes:
    """The bytes torch.save writes for tensor_state(i), made while no task captures."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(tensor_state(i), buf)  # a stream: not captured
    return buf.getvalue()


# -- the staging folder removed behind the agent ---------------------------------------------------

def test_staging_folder_removed_behind_the_agent(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("CLEARML_HOOKS_STRICT", "0")
    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    task = init_task(home, "staging-gone")
    errors = agent_errors()
    p = work / "last.pt"
    for i in (1, 2):
        task.set_last_iteration(i)
        torch.save(tensor_state(i), p)
    shutil.rmtree(task.store.staging_dir)  # a cleanup script, a tmp reaper, a user
    for i in (3, 4, 5):
        task.set_last_iteration(i)
        torch.save(tensor_state(i), p)
    got = agent_errors() - errors
    task.close()
    assert torch_value(p) == 5
    last = snapshots_by_source(home)[str(p)]
    # the snapshots whose staged links were removed can only fail (and do, with a reason);
    # every save after it is a snapshot, and no agent error
    assert sorted(last) == [1, 2, 3, 4, 5], sorted(last)
    assert got == 0, got


# -- Task.close() then Task.init() in the same process ---------------------------------------------

def test_close_then_new_task_saving_the_same_path_keeps_the_pending_snapshot(tmp_path,
                                                                              monkeypatch):
    """Offline (or close(timeout=0)): the closed task's snapshots wait in the journal. A new
    task in the same process saves the same path: README promises a hooked save first makes a
    private copy of the pending snapshot."""
    import torch

    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    p = work / "last.pt"
    task = init_task(home, "first")
    for i in (1, 2):  # the second is linked first
        task.set_last_iteration(i)
        torch.save(tensor_state(i), p)
    task.close()
    task = init_task(home, "second")
    for i in (3, 4):
        task.set_last_iteration(i)
        torch.save(tensor_state(i), p)
    task.close()
    last = snapshots_by_source(home)[str(p)]
    assert sorted(last) == [1, 2, 3, 4]
    assert [last[i]["state"] for i in (1, 2, 3, 4)] == ["ready"] * 4, {
        i: (s["state"], s["error"]) for i, s in last.items()}


# -- the worker stores a snapshot between two saves ------------------------------------------------

def test_a_save_right_after_the_worker_stored_the_last_is_not_a_clobber(tmp_path):
    """Save, wait until the worker removed the staged link (it stored the snapshot), save
    again at once: nothing was rewritten behind the hooks, so no snapshot is reported
    overwritten and the path stays linked (first)."""
    import torch

    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    task = init_task(home, "resolved")
    p = work / "last.pt"
    staging_dir = task.store.staging_dir
    n = 12
    for i in range(1, n + 1):
        task.set_last_iteration(i)
        torch.save(tensor_state(i), p)
        # the worker's remove_staging is the first sign it stored the snapshot
        assert wait_for(lambda: not os.listdir(staging_dir), timeout=30, interval=0)
    assert task.flush(wait_for_uploads=True, timeout=60)
    stats = dict(task.capture_stats)
    task.close()
    last = snapshots_by_source(home)[str(p)]
    assert all(s["state"] == "ready" for s in last.values()), last
    assert stats.get("snapshots_overwritten", 0) == 0, stats
    assert stats["staged_link"] == n, stats


# -- threads ------------------------------------------------------------------------------------

def test_two_threads_taking_turns_on_one_path(tmp_path):
    """Two threads save one path in turns (a lock, as a user would): every save linked first
    and exact; the worker runs meanwhile."""
    import threading

    import torch

    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    task = init_task(home, "threads")
    errors = agent_errors()
    p = work / "last.pt"
    lock = threading.Lock()
    counter = iter(range(1, 10_000))
    failures: list[BaseException] = []
    states = {i: tensor_state(i) for i in range(1, 41)}

    def run() -> None:
        try:
            for _ in range(20):
                with lock:
                    i = next(counter)
                    task.set_last_iteration(i)
                    torch.save(states[i], p)
                time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert task.flush(wait_for_uploads=True, timeout=60)
    assert agent_errors() == errors
    task.close()
    last = snapshots_by_source(home)[str(p)]
    assert sorted(last) == list(range(1, 41))
    assert all(s["state"] == "ready" for s in last.values()), {
        i: s["error"] for i, s in last.items() if s["state"] != "ready"}


# -- many paths (past the 1024-path cache) and the hard link limit ----------------------------------

def test_more_paths_than_the_link_again_cache(tmp_path, monkeypatch):
    """1030 distinct absolute paths saved, 20 of them again (the cache of paths to link first holds
    1024; inline_max lowered so small files are linked): every snapshot exact."""
    import torch

    monkeypatch.setenv("CLEARML_HOOKS_INLINE_MAX", "1024")
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    task = init_task(home, "many")
    errors = agent_errors()
    n = 1030
    sds = [tensor_state(i, 600) for i in range(1, 3)]  # ~3 KiB: over inline_max
    paths = [str(work / f"m{k}.pt") for k in range(n)]
    again = paths[:10] + paths[-10:]  # dropped from the cache when it filled, and kept
    for i, (sd, round_paths) in enumerate(zip(sds, [paths, again], strict=True), 1):
        task.set_last_iteration(i)
        for path in round_paths:
            torch.save(sd, path)
    assert task.flush(wait_for_uploads=True, timeout=60)
    stats = dict(task.capture_stats)
    assert agent_errors() == errors
    assert stats["staged_link"] == n + len(again), stats
    task.close()
    by_src = snapshots_by_source(home)
    assert len(by_src) == n
    for path in paths:
        assert sorted(by_src[path]) == ([1, 2] if path in again else [1]), by_src[path]
        assert all(s["state"] == "ready" for s in by_src[path].values()), by_src[path]


def test_hard_link_limit_falls_back_to_a_copy(tmp_path, monkeypatch):
    """The user's file already has as many hard links as ext4 allows: link first gives way,
    the save is copied, exactly."""
    import torch

    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home, work = tmp_path / "store", tmp_path / "work"
    links = tmp_path / "links"
    work.mkdir()
    links.mkdir()
    task = init_task(home, "emlink")
    p = work / "last.pt"
    task.set_last_iteration(1)
    torch.save(tensor_state(1), p)  # linked: the next save of the path is linked first
    k = 0
    try:
        while True:
            os.link(p, links / str(k))
            k += 1
            if k > 70_000:
                pytest.skip("no hard link limit on this filesystem")
    except OSError as exc:
        import errno

        assert exc.errno == errno.EMLINK, exc
    task.set_last_iteration(2)
    torch.save(tensor_state(2), p)  # rewrites the same inode in place: before_save copies #1 first
    stats = dict(task.capture_stats)
    task.close()
    shutil.rmtree(links)
    assert stats.get("staged_copy", 0) >= 1, stats
    last = snapshots_by_source(home)[str(p)]
    assert [last[i]["state"] for i in (1, 2)] == ["ready", "ready"], last


# -- full disk (a small tmpfs) ------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path, 16) as mnt:
        yield mnt


def test_linked_first_on_a_nearly_full_disk(tmp_path, monkeypatch, small_tmpfs):
    """Store and checkpoints on a 16 MiB tmpfs that fills up as the user writes other files:
    links take no room, private copies do; whatever cannot be kept fails with its reason, the
    user's saves never fail."""
    import torch

    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    monkeypatch.setenv("CLEARML_HOOKS_STAGING_MIN_FREE", str(1 << 20))
    home = small_tmpfs / "store"
    work = small_tmpfs / "work"
    work.mkdir()
    task = init_task(home, "full")
    errors = agent_errors()
    p = work / "last.pt"
    filler = work / "filler.bin"
    for i in range(1, 9):
        task.set_last_iteration(i)
        torch.save(tensor_state(i, 250_000), p)  # ~1 MiB
        with open(filler, "ab") as f:  # the user's other files eat the disk
            try:
                f.write(b"\0" * (2 << 20))
            except OSError:
                pass
    stats = dict(task.capture_stats)
    assert agent_errors() == errors, stats
    filler.unlink()
    task.close()
    assert torch_value(p) == 8  # after close: a hooked load would register an input model
    last = snapshots_by_source(home)[str(p)]
    assert sorted(last) == list(range(1, 9)), (sorted(last), stats)
    assert last[1]["state"] == "ready", last[1]  # saved while there was room
    assert any("not staged" in (s["error"] or "") for s in last.values()), last  # said why


# -- processes: fork, kill -9 ---------------------------------------------------------------------

FORK_BODY = """
    torch.set_num_threads(1)
    task = Task.init(project_name="fork", task_name="fork", output_uri=os.environ["STORE"])
    p = os.path.abspath("last.pt")
    for i in (1, 2):
        task.set_last_iteration(i)
        torch.save(state(i, 0.25), p)
    child = os.fork()
    if child == 0:
        for i in (10, 11, 12):
            task.set_last_iteration(i)
            torch.save(state(i, 0.25), p)
        ok = task.flush(wait_for_uploads=True, timeout=30)
        emit(child=os.getpid(), flushed=ok, stats=task.capture_stats)
        os._exit(0 if ok else 3)
    _, st = os.waitpid(child, 0)
    for i in (3, 4):
        task.set_last_iteration(i)
        torch.save(state(i, 0.25), p)
    emit(parent=os.getpid(), child_rc=os.waitstatus_to_exitcode(st),
         flushed=task.flush(wait_for_uploads=True, timeout=30), stats=task.capture_stats)
"""


def test_forked_child_capturing_the_same_path(z, tmp_path):
    """CLEARML_HOOKS_CAPTURE_IN_WORKERS=1: a child forked after two linked saves saves the same
    path (its own journal, not the parent's link-first cache); the parent saves it again after.
    Every save of both is a ready snapshot with its bytes."""
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), CLEARML_HOOKS_CAPTURE_IN_WORKERS="1")
    proc = z.run(write_script(tmp_path, FORK_BODY), env, work, timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ev = events(proc.stdout)
    child = next(e for e in ev if "child" in e)
    parent = next(e for e in ev if "parent" in e)
    assert child["flushed"] and parent["flushed"] and parent["child_rc"] == 0, ev
    assert child["stats"]["agent_errors"] == 0 and parent["stats"]["agent_errors"] == 0, ev
    # the child's counters start from the parent's (2 saves before the fork)
    assert child["stats"]["saves"] == 5 and parent["stats"]["saves"] == 4, ev
    assert torch_value(work / "last.pt") == 4
    last = snapshots_by_source(home)[str(work / "last.pt")]
    assert sorted(last) == [1, 2, 3, 4, 10, 11, 12]
    assert all(s["state"] == "ready" for s in last.values()), {
        i: s["error"] for i, s in last.items() if s["state"] != "ready"}


KILL_BODY = """
    task = Task.init(project_name="kill", task_name="kill", output_uri=os.environ["STORE"])
    p = os.path.abspath("last.pt")
    for i in (1, 2, 3):
        task.set_last_iteration(i)
        torch.save(state(i, 0.5), p)
    emit(stats=task.capture_stats)
    os.kill(os.getpid(), signal.SIGKILL)  # right after a save linked first
"""


def test_kill9_right_after_a_linked_first_save_then_sync(z, tmp_path):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home))
    proc = z.run(write_script(tmp_path, KILL_BODY), env, work)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    stats = events(proc.stdout)[0]["stats"]
    assert stats["staged_link"] == 3, stats
    assert torch_value(work / "last.pt") == 3
    last = snapshots_by_source(home)[str(work / "last.pt")]
    assert sorted(last) == [1, 2, 3]
    # 1 and 2 were made private by the hooked saves after them; 3 is the user's file, unchanged
    assert all(s["state"] == "ready" for s in last.values()), last
    assert torch_value(work / "last.pt") == 3
