"""Exact bytes or a loud failure (contract clause 5), and the user's files untouched (clause 6).

Real scripts with torch.save hooked, in-place writers that the hooks cannot see (plain
``open(P, "wb")``, file handles opened before the hooked call, a resumed run after a kill -9),
then ``clearml-hooks sync``: every snapshot is ready with exactly its save's bytes, or failed
with a reason.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.faults._util import (
    assert_drained,
    check_snapshots,
    env_for,
    events,
    hidden_staging,
    open_catalog,
    snapshots,
    sync,
    torch_value,
    write_script,
)


def _ready_or_failed(home: Path) -> list[dict]:
    snaps = snapshots(open_catalog(home))
    check_snapshots(snaps, home / "blobs")
    return snaps


# -- 2. crash, then an in-place rewrite of the same size before recovery --------------------------

CRASH_THEN_REWRITE = """
    task = Task.init(project_name="faults", task_name="crash", output_uri=os.environ["STORE"])
    task.set_last_iteration(1)
    torch.save(state(1, 2.0), "last.pt")
    emit(saved=1, size=os.path.getsize("last.pt"))
    os.kill(os.getpid(), signal.SIGKILL)  # before the worker ever starts
"""

REWRITE_SAME_SIZE = """
    # the resumed run (or any program) rewrites last.pt in place with the same size
    data = serialized(2, 2.0, "last.pt")
    assert len(data) == os.path.getsize("last.pt")
    if os.environ.get("HOOKED") == "1":
        task = Task.init(project_name="faults", task_name="resume",
                         output_uri=os.environ["STORE"])
        task.set_last_iteration(2)
        torch.save(state(2, 2.0), "last.pt")  # hooked: truncates and rewrites the same inode
        os.kill(os.getpid(), signal.SIGKILL)  # and dies before its own worker runs
    st = os.stat("last.pt")
    with open("last.pt", "r+b") as f:
        f.write(data)
    if os.environ.get("KEEP_MTIME") == "1":  # rsync --inplace -t, cp --preserve=timestamps
        os.utime("last.pt", ns=(st.st_atime_ns, st.st_mtime_ns))
    emit(rewritten=2)
"""


def _crash_then_rewrite(z, tmp_path: Path, **env_extra: str) -> tuple[Path, list[dict]]:
    home = tmp_path / "store"
    work = tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), **env_extra)
    first = z.run(write_script(tmp_path, CRASH_THEN_REWRITE, "a.py"), env, work)
    assert first.returncode == -9, first.stderr[-2000:]
    assert events(first.stdout) and events(first.stdout)[0]["saved"] == 1
    second = z.run(write_script(tmp_path, REWRITE_SAME_SIZE, "b.py"), env, work)
    assert second.returncode in (0, -9), second.stderr[-2000:]
    assert torch_value(work / "last.pt") == 2  # the user's file is what the user wrote
    sync(home)
    snaps = _ready_or_failed(home)
    assert_drained(home)
    assert not hidden_staging(work)
    return home, snaps


def test_crash_then_same_size_rewrite_is_never_ready_with_new_bytes(z, tmp_path):
    _home, snaps = _crash_then_rewrite(z, tmp_path)
    v1 = [s for s in snaps if s["iteration"] == 1]
    assert len(v1) == 1
    assert v1[0]["state"] == "failed", v1  # its bytes are gone: a loud failure is all it can be
    assert "rewritten in place" in v1[0]["error"]


def test_crash_then_hooked_resume_rewrite_is_never_ready_with_new_bytes(z, tmp_path):
    _home, snaps = _crash_then_rewrite(z, tmp_path, HOOKED="1")
    v1 = [s for s in snaps if s["iteration"] == 1]
    assert len(v1) == 1 and v1[0]["state"] == "failed", v1


def _offline_run_then_sync(z, tmp_path: Path, body: str) -> tuple[Path, list, dict]:
    """Run ``body`` offline (nothing stored while it runs), then sync: (work folder, its
    events, its snapshots by iteration)."""
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), CLEARML_HOOKS_OFFLINE="1")
    proc = z.run(write_script(tmp_path, body), env, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync(home)
    by_it = {s["iteration"]: s for s in _ready_or_failed(home)}
    assert_drained(home)
    return work, events(proc.stdout), by_it


def test_offline_then_same_size_rewrite_before_sync(z, tmp_path):
    """Offline: the snapshot waits in the journal; a same-size rewrite before sync fails it."""
    body = """
        data = serialized(11, 1.0, "last.pt")
        task = Task.init(project_name="faults", task_name="offline", output_uri=os.environ["STORE"])
        for i in range(1, 4):
            task.set_last_iteration(i)
            torch.save(state(i, 1.0), f"ep{i}.pt")
        task.set_last_iteration(10)
        torch.save(state(10, 1.0), "last.pt")
        task.close()
        with open("last.pt", "r+b") as f:   # a plain same-size writer, after the run
            f.write(data)
        emit(done=1)
    """
    work, _events, by_it = _offline_run_then_sync(z, tmp_path, body)
    assert {1, 2, 3, 10} <= set(by_it)
    assert all(by_it[i]["state"] == "ready" for i in (1, 2, 3)), by_it
    assert by_it[10]["state"] == "failed", by_it[10]
    for i in (1, 2, 3):
        assert torch_value(work / f"ep{i}.pt") == i
    assert torch_value(work / "last.pt") == 11


def test_two_offline_runs_saving_one_checkpoint_then_sync(z, tmp_path):
    """Offline, a run saves last.pt epoch after epoch and ends; the next run (a new process,
    offline too) saves last.pt again before anyone syncs. The first run's last version is kept
    private at its close (it saved that path more than once), so sync stores every version of
    both runs exactly; an epoch file saved once keeps its link (no copy) and is stored too."""
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), CLEARML_HOOKS_OFFLINE="1")
    run = """
        first = int(os.environ["FIRST"])
        task = Task.init(project_name="faults", task_name=f"run-{first}",
                         output_uri=os.environ["STORE"], reuse_last_task_id=False)
        for i in range(first, first + 3):
            task.set_last_iteration(i)
            torch.save(state(i, 0.25), "last.pt")
        task.set_last_iteration(first + 50)
        torch.save(state(first + 50, 0.25), f"epoch-{first}.pt")
        task.close()
        emit(stats=task.capture_stats)
    """
    script = write_script(tmp_path, run)
    stats = []
    for first in (1, 11):
        proc = z.run(script, dict(env, FIRST=str(first)), work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats.append(events(proc.stdout)[0]["stats"])
    # the last pending link of last.pt, copied at close; epoch-N.pt (saved once) stays a link
    assert [s.get("private_copies_at_close", 0) for s in stats] == [1, 1], stats
    sync(home)
    by_it = {s["iteration"]: s for s in _ready_or_failed(home)}
    assert_drained(home)
    assert sorted(by_it) == [1, 2, 3, 11, 12, 13, 51, 61], sorted(by_it)
    assert all(s["state"] == "ready" for s in by_it.values()), {
        i: (s["state"], s["error"]) for i, s in by_it.items()}
    assert torch_value(work / "last.pt") == 13


def test_a_checkpoint_linked_first_then_rewritten_behind_the_hooks(z, tmp_path):
    """A path saved again is linked first (no open): each hooked save first makes the pending
    link of the previous one private, so those are stored exactly; a same-size writer the
    hooks cannot see fails the last one loudly, never stores its new bytes."""
    body = """
        data = serialized(9, 0.25, "last.pt")
        task = Task.init(project_name="faults", task_name="again", output_uri=os.environ["STORE"])
        for i in range(1, 5):
            task.set_last_iteration(i)
            torch.save(state(i, 0.25), "last.pt")
        with open("last.pt", "r+b") as f:  # same size, in place, behind the hooks
            f.write(data)
        emit(stats=task.capture_stats)
    """
    work, ev, by_it = _offline_run_then_sync(z, tmp_path, body)
    stats = ev[0]["stats"]
    assert stats["staged_link"] == 4 and stats["private_copies"] == 3, stats
    assert sorted(by_it) == [1, 2, 3, 4]
    assert all(by_it[i]["state"] == "ready" for i in (1, 2, 3)), by_it
    assert by_it[4]["state"] == "failed" and "rewritten in place" in by_it[4]["error"], by_it[4]
    assert torch_value(work / "last.pt") == 9


# -- 3. file-handle saves -------------------------------------------------------------------------

FILE_HANDLE = """
    task = Task.init(project_name="faults", task_name="fh", output_uri=os.environ["STORE"])
    task.set_last_iteration(1)
    torch.save(state(1, 3.0), "last.pt")
    task.set_last_iteration(2)
    with open("last.pt", "wb") as f:       # truncates the staged inode before the hook runs
        torch.save(state(2, 3.0), f)
    emit(after_with=os.path.exists("last.pt"), size=os.path.getsize("last.pt"))
    for epoch in range(3, 13):             # torch.save(obj, open(P, "wb")) every epoch
        task.set_last_iteration(epoch)
        torch.save(state(epoch, 0.5), open("epoch.pt", "wb"))
        emit(epoch=epoch, exists=os.path.exists("epoch.pt"))
    task.flush(wait_for_uploads=True, timeout=60)
    emit(stats=task.capture_stats)
"""


@pytest.mark.parametrize("offline", ["0", "1"], ids=["live", "offline"])
def test_file_handle_saves_keep_the_users_file_and_exact_bytes(z, tmp_path, offline):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), CLEARML_HOOKS_OFFLINE=offline)
    proc = z.run(write_script(tmp_path, FILE_HANDLE), env, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = events(proc.stdout)
    assert ev[0]["after_with"] is True, ev
    assert all(e["exists"] for e in ev if "epoch" in e), ev
    # the user's files hold what the user wrote last
    assert torch_value(work / "last.pt") == 2
    assert torch_value(work / "epoch.pt") == 12
    sync(home)
    snaps = _ready_or_failed(home)
    by_it = {s["iteration"]: s for s in snaps}
    # the file-handle saves themselves are captured with their exact bytes; a path written
    # in place behind a pending link is copied from then on, so only the first snapshot of
    # each path may fail (and only with its reason: checked above)
    assert by_it[2]["state"] == "ready", by_it[2]
    for epoch in range(4, 12):
        assert by_it[epoch]["state"] == "ready", by_it[epoch]
    assert by_it[12]["state"] == "ready", by_it[12]
    assert_drained(home)


def test_file_handle_save_after_a_pending_link_fails_that_snapshot_loudly(z, tmp_path):
    """The user's open(P, "wb") truncates the inode a pending hard-linked snapshot shares
    before the hooked torch.save(obj, f) starts (README, clause 5): that snapshot fails with
    its reason, the user's file is intact, and the path is copied from then on."""
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), CLEARML_HOOKS_OFFLINE="1")
    proc = z.run(write_script(tmp_path, FILE_HANDLE), env, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync(home)
    by_it = {s["iteration"]: s for s in _ready_or_failed(home)}
    assert by_it[1]["state"] == "failed" and "rewritten in place" in by_it[1]["error"]
    assert by_it[3]["state"] == "ready", by_it[3]["error"]


# -- 4. same-size plain writers racing pending snapshots -----------------------------------------

RACING_WRITERS = """
    import random
    rng = random.Random(int(os.environ.get("SEED", "1")))
    foreign = {i: serialized(1000 + i, 2.0, f"p{i % 3}.pt") for i in range(1, 31)}
    task = Task.init(project_name="faults", task_name="writers", output_uri=os.environ["STORE"])
    for i in range(1, 31):
        path = f"p{i % 3}.pt"
        task.set_last_iteration(i)
        torch.save(state(i, 2.0), path)
        assert os.path.getsize(path) == len(foreign[i])
        time.sleep(rng.choice([0, 0, 0.0005, 0.002, 0.01, 0.05]))
        if rng.random() < 0.6:
            with open(path, "r+b" if rng.random() < 0.5 else "wb") as f:  # a writer we don't hook
                f.write(foreign[i])
            emit(clobbered=i)
    task.flush(wait_for_uploads=True, timeout=90)
    emit(stats=task.capture_stats)
"""


def test_same_size_plain_writers_never_store_other_bytes(z, tmp_path):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), SEED="7")
    proc = z.run(write_script(tmp_path, RACING_WRITERS), env, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync(home)
    snaps = _ready_or_failed(home)  # a ready snapshot with value 1000+i would fail here
    assert len(snaps) == 30
    clobbered = {e["clobbered"] for e in events(proc.stdout) if "clobbered" in e}
    for snap in snaps:
        if snap["iteration"] not in clobbered:
            assert snap["state"] == "ready", snap
    assert_drained(home)


# -- 5. update_weights(p, async_enable=True), then a hooked save of p ----------------------------

UPDATE_THEN_SAVE = """
    task = Task.init(project_name="faults", task_name="uw", output_uri=os.environ["STORE"])
    ids = {}
    for i in range(1, 16):
        p = f"w{i}.pt"
        torch.save(state(i, 1.0), p)            # hooked too: a captured snapshot of p
        out = OutputModel(task=task, name=f"w{i}")
        out.update_weights(p, async_enable=True)
        ids[out.id] = i
        torch.save(state(500 + i, 1.0), p)      # a hooked save rewrites p at once
    assert OutputModel.wait_for_uploads(timeout=90)
    task.flush(wait_for_uploads=True, timeout=90)
    emit(ids=ids)
"""


def test_update_weights_then_hooked_save_keeps_registered_bytes(z, tmp_path):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home))
    proc = z.run(write_script(tmp_path, UPDATE_THEN_SAVE), env, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = events(proc.stdout)[-1]["ids"]
    sync(home)
    snaps = snapshots(open_catalog(home))
    expect = {}
    for snap in snaps:
        if snap["model_id"] in ids:
            expect[snap["id"]] = ids[snap["model_id"]]
    check_snapshots(snaps, home / "blobs", expect=expect)
    registered = [s for s in snaps if s["model_id"] in ids]
    assert len(registered) == 15
    assert all(s["state"] == "ready" for s in registered), [s["error"] for s in registered]
    for i in range(1, 16):
        assert torch_value(work / f"w{i}.pt") == 500 + i
    assert_drained(home)


# -- 8. FIFOs --------------------------------------------------------------------------------------

FIFO = """
    import threading
    task = Task.init(project_name="faults", task_name="fifo", output_uri=os.environ["STORE"])
    os.mkfifo("pipe.pt")
    out = OutputModel(task=task, name="fifo")
    t0 = time.monotonic()
    try:
        out.update_weights("pipe.pt", async_enable=True)
        emit(update_weights="accepted")
    except ValueError as exc:
        emit(update_weights="ValueError", msg=str(exc), s=time.monotonic() - t0)
    got = []
    reader = threading.Thread(target=lambda: got.append(open("pipe.pt", "rb").read()))
    reader.start()
    task.set_last_iteration(1)
    t0 = time.monotonic()
    torch.save(state(1, 0.5), "pipe.pt")       # hooked save into a FIFO (a reader drains it)
    reader.join(10)
    emit(fifo_save_s=time.monotonic() - t0, read=len(got[0]) if got else 0)
    for i in range(2, 6):
        task.set_last_iteration(i)
        torch.save(state(i, 0.5), f"ok{i}.pt")
    t0 = time.monotonic()
    emit(flushed=task.flush(wait_for_uploads=True, timeout=30), s=time.monotonic() - t0,
         stats=task.capture_stats)
"""


def test_fifo_refused_and_never_blocks_the_worker(z, tmp_path):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home))
    proc = z.run(write_script(tmp_path, FIFO), env, work, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = {k: v for e in events(proc.stdout) for k, v in e.items()}
    assert ev["update_weights"] == "ValueError", ev
    assert "not a regular file" in ev["msg"] and ev["s"] < 1
    assert ev["read"] > 0 and ev["fifo_save_s"] < 5
    assert ev["flushed"] is True and ev["s"] < 20, ev
    assert stat.S_ISFIFO(os.stat(work / "pipe.pt").st_mode)  # never replaced by the agent
    sync(home)
    snaps = _ready_or_failed(home)
    by_it = {s["iteration"]: s for s in snaps if s["iteration"] is not None}
    for i in range(2, 6):
        assert by_it[i]["state"] == "ready"
    if 1 in by_it:
        assert by_it[1]["state"] == "failed" and "regular file" in by_it[1]["error"]
    assert_drained(home)


# -- 9. hooked rewrites of one path while the worker reads its previous snapshot ------------------

HOOKED_REWRITES = """
    import random
    task = Task.init(project_name="faults", task_name="rewrites", output_uri=os.environ["STORE"])
    task.capturer.start(delay=0)           # the worker runs from the first save on
    rng = random.Random(int(os.environ["SEED"]))
    for i in range(1, 25):
        task.set_last_iteration(i)
        torch.save(state(i, 32.0), "best.pt")   # same size each time, rewritten in place
        time.sleep(rng.uniform(0.05, 0.4))      # lands anywhere in the worker's read
    emit(flushed=task.flush(wait_for_uploads=True, timeout=120), stats=task.capture_stats)
"""


def test_hooked_rewrites_during_the_workers_read_are_all_stored(z, tmp_path):
    """ModelCheckpoint(save_best_only) rewrites one file every epoch: each hooked rewrite
    copies the pending snapshot first, so none may fail, even when the worker was halfway
    through reading the old inode when the rewrite began."""
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    proc = z.run(write_script(tmp_path, HOOKED_REWRITES), env_for(home, STORE=str(home),
                                                                   SEED="11"), work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert events(proc.stdout)[-1]["flushed"] is True
    assert events(proc.stdout)[-1]["stats"].get("private_copies", 0) > 0  # rewrites of pending
    snaps = _ready_or_failed(home)
    assert len(snaps) == 24
    assert [s["error"] for s in snaps if s["state"] != "ready"] == []
    assert_drained(home)
    shutil.rmtree(tmp_path)  # 768 MB of blobs
