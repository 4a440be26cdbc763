"""An adversary for what a close leaves pending: ``Capturer.keep_pending_private`` (called by
``task._drain`` when a task closes with snapshots pending: offline, or the store unreachable),
``PendingLinks.take_inode`` / ``take_under`` (pending links found by the inode of the file about to be
rewritten), ``staging.make_private`` (PRIVATE / GONE / CHANGED / NO_ROOM / NOT_COPIED) and the
staged reader, with real files, real torch, real processes (the torch zygote), the session's
PostgreSQL frozen with SIGSTOP (always SIGCONT in ``finally``) or a port that refuses, kill -9,
and ``clearml-hooks sync`` in another process. After each attack every snapshot is ready with
exactly the bytes of its save or failed with a reason, nothing is left in staging after sync,
the user's saves never raised and the agent counted no error.

What held:

- online, PostgreSQL frozen or refusing: a run saves last.pt three times and closes with a
  1 s timeout; close returns within ~1 s, the pending link of last.pt is copied at close
  (``private_copies_at_close == 1``), a second process then rewrites last.pt with a hooked save
  while the catalog is still down, and after sync all four snapshots are ready and exact;
- close racing the worker that stores and removes the very link being copied (close timeouts
  swept across the worker's store time): no warning, no ``.private`` left behind once the
  worker is idle, every snapshot ready;
- the user's own hard link (``os.link(last, best)`` then a hooked save of best.pt), a symlinked
  folder swapped between saves (runs/current -> 2024 -> 2025 -> 2024), the same file saved
  through ``/proc/self/fd/N``; then another process rewrites them all: every snapshot ready;
- filtered-out saves (``auto_connect_frameworks={"pytorch": ["*.pt"]}``) through a hard link
  of a pending file: the pending snapshot is copied first (by inode); saves to a missing folder,
  a path with a NUL, a symlink loop and a too long name behave exactly as without the agent;
  no save waited;
- a pending link on /dev/shm and a file on /dev (devtmpfs) with the same inode number: only
  needless private copies, every snapshot ready and exact;
- kill -9 while close copies a pending 200 MiB checkpoint (caught with its ``.tmp`` half copy
  in staging), then another process rewrites it: the snapshot fails with its reason, the
  earlier one is ready, the ``.tmp`` is gone after sync.

What broke (each fixed, and kept as the test that found it):

- a checkpoint saved again and again on another filesystem than the store (the work folder on
  tmpfs, a scratch disk, ...) is staged in a hidden folder beside it, never through the
  link-first path; only ``Capturer._journal_link_first`` flags a pending link ``again``, so
  ``keep_pending_private`` copies nothing at close and the next run's save of last.pt fails the
  closed run's last snapshot, though the README says a closing task copies "each path it saved
  more than once";
- a path this process saved before, saved once by the next task of the same process: its link
  is not flagged ``again`` (a new ``Capturer``, whose first save of the path takes the general
  way), so it is not copied at close and the next run fails that snapshot, though
  ``keep_pending_private`` promises the paths "this process saved more than once".

The fix: ``PendingLinks.add`` decides ``again`` for the whole process (a path it linked
before, by any task, whichever way it was staged); the index also answers a save without a
scan of every pending link (an offline run keeps them all pending).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from tests.faults._inproc import (
    agent_errors,
    init_task,
    snapshots_by_source,
    tensor_state,
)
from tests.faults._util import (
    assert_drained,
    check_snapshots,
    env_for,
    events,
    new_database,
    open_catalog,
    process_tree,
    signal_all,
    snapshots,
    sync,
    torch_value,
    write_script,
)

NEXT_RUN = """
    # the next run: rewrites each path in place with a hooked torch.save, then closes
    task = Task.init(project_name="next", task_name="next", output_uri=os.environ["STORE"])
    for p in sys.argv[1:] or os.environ["PATHS"].split(os.pathsep):
        task.set_last_iteration(int(os.environ["VALUE"]))
        torch.save(state(int(os.environ["VALUE"]), 0.2), p)
    task.close()
    emit(stats=task.capture_stats)
"""


def _next_run(z, tmp_path: Path, home: Path, paths: list[Path], value: int, **env: str) -> dict:
    e = env_for(home, STORE=str(home), PATHS=os.pathsep.join(map(str, paths)), VALUE=str(value),
                **{"CLEARML_HOOKS_OFFLINE": "1", **env})
    proc = z.run(write_script(tmp_path, NEXT_RUN, "next_run.py"), e, tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ev = events(proc.stdout)[-1]
    assert ev["stats"].get("agent_errors", 0) == 0, ev
    return ev


def _save(task, i: int, path) -> None:
    import torch

    task.set_last_iteration(i)
    torch.save(tensor_state(i), path)


def _not_ready(snaps: dict[int, dict]) -> dict[int, str]:
    return {i: s["error"] for i, s in snaps.items() if s["state"] != "ready"}


@pytest.fixture
def shm_dir():
    """A work folder on another filesystem than the store (tmpfs /dev/shm)."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(
            tempfile.gettempdir()).st_dev:
        pytest.skip("no tmpfs /dev/shm apart from the temp folder")
    path = Path(tempfile.mkdtemp(prefix="close-adversary-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_cross_filesystem_checkpoint_kept_private_at_close(z, tmp_path, monkeypatch, shm_dir):
    """Offline, the work folder on tmpfs (/dev/shm), the store on the temp disk: last.pt saved
    three times, the task closed, then another process rewrites last.pt (hooked)."""
    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home = tmp_path / "store"
    last = shm_dir / "last.pt"
    errors = agent_errors()
    task = init_task(home, "xfs")
    for i in (1, 2, 3):
        _save(task, i, last)
    task.close()
    stats = dict(task.capture_stats)
    assert agent_errors() == errors, stats
    _next_run(z, tmp_path, home, [last], 9)
    assert torch_value(last) == 9
    mine = snapshots_by_source(home)[str(last)]
    assert sorted(mine) == [1, 2, 3, 9]
    assert stats.get("private_copies_at_close", 0) == 1, stats
    assert not _not_ready(mine), (_not_ready(mine), stats)


def test_next_task_of_the_process_saves_the_checkpoint_once(z, tmp_path, monkeypatch):
    """Offline: task 1 saves last.pt twice and closes (copied at close), task 2 of the same
    process saves last.pt once and closes, then another process rewrites last.pt (hooked)."""
    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    last = work / "last.pt"
    errors = agent_errors()
    task = init_task(home, "t1")
    _save(task, 1, last)
    _save(task, 2, last)
    task.close()
    task = init_task(home, "t2")
    _save(task, 3, last)
    task.close()
    stats = dict(task.capture_stats)
    assert agent_errors() == errors, stats
    _next_run(z, tmp_path, home, [last], 9)
    mine = snapshots_by_source(home)[str(last)]
    assert sorted(mine) == [1, 2, 3, 9]
    assert not _not_ready(mine), (_not_ready(mine), stats)


# -- online, the catalog down at close ----------------------------------------------------------

ONLINE_RUN = """
    task = Task.init(project_name="close", task_name=os.environ["NAME"])
    vals = [int(v) for v in os.environ["VALUES"].split(",")]
    worst = 0.0
    for i in vals:
        task.set_last_iteration(i)
        t0 = time.monotonic()
        torch.save(state(i, float(os.environ.get("MB", "2"))), "last.pt")
        worst = max(worst, time.monotonic() - t0)
    t0 = time.monotonic()
    task.close(timeout=float(os.environ["CLOSE_TIMEOUT"]))
    emit(close=time.monotonic() - t0, worst=worst, stats=task.capture_stats)
"""








@pytest.mark.parametrize("fault", ["frozen", "refused"])
def test_online_catalog_down_close_keeps_last_private(z, tmp_path, pg_server, fault):
    """Online, the catalog frozen (SIGSTOP) or refusing: last.pt saved three times, close(1 s)
    copies its pending link at close and returns in time; a second process rewrites last.pt
    (hooked) before the catalog is back; after sync all four snapshots are ready and exact."""
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    url = new_database(pg_server, "c")
    run_url = url
    if fault == "refused":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there: every connection is refused at once
        run_url = f"postgresql+psycopg://u@127.0.0.1:{port}/x"
    env = env_for(home, CLEARML_HOOKS_CATALOG_URL=run_url, CLEARML_HOOKS_CATALOG_TIMEOUT="1",
                  CLEARML_HOOKS_EXIT_TIMEOUT="1", CLOSE_TIMEOUT="1")
    frozen: list[int] = []
    try:
        if fault == "frozen":
            frozen = process_tree(pg_server.pid)
            signal_all(frozen, signal.SIGSTOP)
        proc = z.run(write_script(tmp_path, ONLINE_RUN, "first.py"),
                     dict(env, NAME="first", VALUES="1,2,3"), work, timeout=60)
        assert proc.returncode == 0, proc.stdout[-3000:]
        first = events(proc.stdout)[-1]
        proc = z.run(write_script(tmp_path, ONLINE_RUN, "second.py"),
                     dict(env, NAME="second", VALUES="9", MB="0.5"), work, timeout=60)
        assert proc.returncode == 0, proc.stdout[-3000:]
        second = events(proc.stdout)[-1]
    finally:
        signal_all(frozen, signal.SIGCONT)
    assert first["worst"] < 1.0, first  # no save waited on the catalog
    assert first["close"] < 1 + 2, first  # close waited its timeout, plus a copy of 8 MiB
    assert first["stats"]["private_copies_at_close"] == 1, first
    assert first["stats"]["agent_errors"] == 0 and second["stats"]["agent_errors"] == 0
    assert torch_value(work / "last.pt") == 9
    env["CLEARML_HOOKS_CATALOG_URL"] = url
    result = sync(home, env=env, timeout=60)
    assert not result["errors"], result
    snaps = snapshots(open_catalog(home, url))
    counts = check_snapshots(snaps, home / "blobs")
    assert counts == {"ready": 4, "failed": 0}, snaps
    assert_drained(home, env)


# -- close racing the worker --------------------------------------------------------------------------

def test_close_races_the_worker_storing_the_link(tmp_path, caplog):
    """Online (SQLite): last.pt (8 MiB) saved twice per task, close timeouts swept across the
    worker's time to store it, so keep_pending_private copies a link the worker is storing and
    removing (GONE), or just did. No warning, nothing left in staging once the worker is idle,
    every snapshot ready and exact."""
    import torch

    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    errors = agent_errors()
    last = work / "last.pt"
    big = 1 << 19  # int32 elements: 2 MiB
    stats = []
    leftovers = []
    caplog.set_level(logging.WARNING, logger="clearml_hooks")
    i = 0
    for k in range(16):
        task = init_task(home, f"race-{k}")
        for _ in range(2):
            i += 1
            task.set_last_iteration(i)
            torch.save(tensor_state(i, big), last)
        task.close(timeout=0.06 + 0.005 * k)
        assert task.store.worker.wait(30)
        stats.append(task.capture_stats.get("private_copies_at_close"))
        leftovers += [str(p) for p in (home / "staging").rglob("*") if p.is_file()]
    assert agent_errors() == errors, stats
    assert not leftovers, leftovers
    assert not [r.getMessage() for r in caplog.records if "private" in r.getMessage()]
    by_src = snapshots_by_source(home)
    assert sorted(by_src[str(last)]) == list(range(1, i + 1))
    assert all(s["state"] == "ready" for s in by_src[str(last)].values())


# -- aliases: the same inode under another path ------------------------------------------------

def test_aliases_of_a_pending_link(z, tmp_path, monkeypatch):
    """Offline: the user's own hard link, a symlinked folder swapped between saves and a
    /proc/self/fd path, each a hooked save rewriting an inode whose snapshot is pending under
    another path; then another process rewrites every file in place before sync."""
    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home, work = tmp_path / "store", tmp_path / "work"
    runs = work / "runs"
    (runs / "2024").mkdir(parents=True)
    (runs / "2025").mkdir()
    current = runs / "current"
    errors = agent_errors()

    def point(target: str) -> None:
        tmp = runs / ".current.tmp"
        os.symlink(target, tmp)
        os.replace(tmp, current)

    last, best = work / "last.pt", work / "best.pt"
    task = init_task(home, "aliases")
    # the user's own hard link
    _save(task, 1, last)
    os.link(last, best)
    _save(task, 2, best)
    _save(task, 3, last)
    # a symlinked folder swapped between saves
    point("2024")
    _save(task, 4, current / "last.pt")
    _save(task, 5, current / "last.pt")
    point("2025")
    _save(task, 6, current / "last.pt")
    _save(task, 7, runs / "2024" / "last.pt")
    point("2024")
    _save(task, 8, current / "last.pt")
    # the same file through /proc/self/fd
    fd = os.open(last, os.O_RDONLY)
    try:
        _save(task, 9, f"/proc/self/fd/{fd}")
        _save(task, 10, last)
        _save(task, 11, f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    task.close()
    stats = dict(task.capture_stats)
    assert agent_errors() == errors, stats
    assert stats.get("snapshots_overwritten", 0) == 0, stats
    # the next run rewrites every one of them in place
    _next_run(z, tmp_path, home, [last, runs / "2024" / "last.pt", runs / "2025" / "last.pt"], 99)
    by_src = snapshots_by_source(home)
    got = sorted((i, src, s["state"], s["error"]) for src, snaps in by_src.items()
                 for i, s in snaps.items())
    assert [g[0] for g in got] == [*range(1, 12), 99, 99, 99], got
    assert all(g[2] == "ready" for g in got), (got, stats)


KILLED_AT_CLOSE = """
    task = Task.init(project_name="kill", task_name="kill", output_uri=os.environ["STORE"])
    for i in (1, 2):
        task.set_last_iteration(i)
        torch.save(state(i, float(os.environ["MB"])), "last.pt")
    emit(closing=os.getpid())
    task.close()
    emit(closed=os.getpid(), stats=task.capture_stats)
    time.sleep(60)
"""


# -- kill -9 at close -------------------------------------------------------------------------------

def test_kill9_while_close_copies_a_big_checkpoint(z, tmp_path):
    """Offline: last.pt (200 MiB) saved twice; the process is killed while close copies its
    pending link (its ``.tmp`` half copy seen in staging); another process rewrites last.pt;
    after sync the copied snapshot failed with its reason, the others are ready and exact, and
    nothing (no ``.tmp``) is left in staging."""
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), CLEARML_HOOKS_OFFLINE="1", MB="200")
    key, pid, out = z.start(write_script(tmp_path, KILLED_AT_CLOSE, "kill.py"), env, work)
    staging = home / "staging"
    caught = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and caught is None:
            text = out.read_text() if out.exists() else ""
            if "closed" in text or z.exits.get(key) is not None:
                break
            if "closing" in text:
                for folder, _dirs, names in os.walk(staging):
                    tmps = [n for n in names if n.endswith(".tmp")]
                    if tmps:
                        os.kill(pid, signal.SIGKILL)
                        caught = os.path.join(folder, tmps[0])
                        break
            else:
                time.sleep(0.01)
    finally:
        if z.exits.get(key) is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        z.wait(key, 30)
    assert caught is not None, out.read_text()[-3000:]
    assert os.path.exists(caught)  # the half copy, left by the kill
    _next_run(z, tmp_path, home, [work / "last.pt"], 99)
    mine = snapshots_by_source(home)[str(work / "last.pt")]  # checks ready-exact or a reason
    assert sorted(mine) == [1, 2, 99]
    assert mine[1]["state"] == "ready" and mine[99]["state"] == "ready", mine
    assert not os.path.exists(caught)


# -- filtered-out saves, odd paths ------------------------------------------------------------------

def test_filtered_out_saves_while_links_are_pending(tmp_path, monkeypatch):
    """Offline, only *.pt captured: last.pt's snapshot pending, then 50 filtered-out saves
    through the user's hard link of it (found by inode: copied first), and saves to paths where
    torch.save fails (or, with a NUL, writes elsewhere): the same outcome as without the agent,
    no save waited, every snapshot ready and exact."""
    import torch

    from clearml_hooks import Task

    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    last, alias = work / "last.pt", work / "alias.ckpt"
    loop = work / "loop"
    os.symlink(loop, loop)
    weird = [work / "no-such-dir" / "x.ckpt", str(work / "nul\0.ckpt"), loop / "x.ckpt",
             work / ("n" * 300 + ".ckpt")]
    unhooked: dict[str, type | None] = {}
    for p in weird:  # what torch.save does there without the agent (a NUL ends a C string)
        try:
            torch.save(tensor_state(0), p)
            unhooked[str(p)] = None
        except Exception as exc:
            unhooked[str(p)] = type(exc)
    errors = agent_errors()
    task = Task.init(project_name="adversary", task_name="filtered", output_uri=str(home),
                     reuse_last_task_id=False, auto_connect_frameworks={"pytorch": ["*.pt"]})
    _save(task, 1, last)
    os.link(last, alias)
    worst = 0.0
    for k in range(50):  # filtered out (not *.pt), each one rewrites last.pt's inode
        t0 = time.monotonic()
        torch.save(tensor_state(100 + k), alias)
        worst = max(worst, time.monotonic() - t0)
    for p in weird:
        want = unhooked[str(p)]
        if want is None:
            torch.save(tensor_state(0), p)
        else:
            with pytest.raises(want):
                torch.save(tensor_state(0), p)
    _save(task, 2, last)
    task.close()
    stats = dict(task.capture_stats)
    assert agent_errors() == errors, stats
    assert torch_value(alias) == 2  # still one file: the user's hard link
    mine = snapshots_by_source(home)[str(last)]
    assert sorted(mine) == [1, 2] and all(s["state"] == "ready" for s in mine.values()), mine
    assert worst < 1.0


@pytest.fixture
def dev_dir():
    """A folder on a third filesystem (devtmpfs /dev, whose inode numbers are a counter)."""
    try:
        path = Path(tempfile.mkdtemp(prefix="close-adversary-", dir="/dev"))
    except OSError:
        pytest.skip("/dev is not writable here")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_same_inode_number_on_another_filesystem(tmp_path, monkeypatch, shm_dir, dev_dir):
    """Offline: a.pt's snapshot pending on /dev/shm; files made and removed on /dev until one
    has a.pt's inode number; hooked saves of it and of a.pt: false matches cost needless private
    copies only, every snapshot ready and exact."""
    monkeypatch.setenv("CLEARML_HOOKS_OFFLINE", "1")
    home = tmp_path / "store"
    a = shm_dir / "a.pt"
    errors = agent_errors()
    task = init_task(home, "inode")
    _save(task, 1, a)
    target = os.stat(a).st_ino
    b = None
    for k in range(200_000):  # files made and removed until one has a.pt's inode number
        p = dev_dir / f"f{k}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        ino = os.fstat(fd).st_ino
        os.close(fd)
        if ino == target:
            b = p
            break
        os.unlink(p)
        if ino > target:
            break
    if b is None:
        task.close()
        pytest.skip(f"no inode {target} on {dev_dir}")
    assert os.stat(b).st_ino == os.stat(a).st_ino and os.stat(b).st_dev != os.stat(a).st_dev
    _save(task, 2, b)  # a false match: a needless private copy of a.pt's pending link at most
    _save(task, 3, b)
    _save(task, 4, a)
    task.close()
    stats = dict(task.capture_stats)
    assert agent_errors() == errors, stats
    assert torch_value(a) == 4 and torch_value(b) == 3
    by_src = snapshots_by_source(home)
    got = {i: (s["state"], s["error"]) for snaps in by_src.values() for i, s in snaps.items()}
    assert sorted(got) == [1, 2, 3, 4] and all(v[0] == "ready" for v in got.values()), got
