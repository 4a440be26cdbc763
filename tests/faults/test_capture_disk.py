"""A full disk (contract clause 7 and issue 7's "the user's saves never fail because of the
agent"): a small tmpfs holding the store and the checkpoints; then the store alone on it."""

from __future__ import annotations

import os

import pytest

from tests.faults._util import (
    check_snapshots,
    env_for,
    events,
    hidden_staging,
    mounted_tmpfs,
    open_catalog,
    snapshots,
    sync,
    torch_value,
    write_script,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")



@pytest.fixture
def tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path, 64, "small") as mnt:
        yield mnt


OVERWRITE = """
    if os.environ.get("AGENT") == "1":
        task = Task.init(project_name="faults", task_name="disk", output_uri=os.environ["STORE"])
    ok = 0
    errors = []
    for i in range(1, 21):
        if os.environ.get("AGENT") == "1":
            task.set_last_iteration(i)
        try:
            torch.save(state(i, 20.0), os.environ["CKPT"])
            ok += 1
        except Exception as exc:
            errors.append(repr(exc)[:200])
    emit(ok=ok, errors=errors[:3])
    if os.environ.get("AGENT") == "1":
        emit(stats=task.capture_stats)
"""


def test_full_tmpfs_with_store_and_checkpoints(z, tmp_path, tmpfs):
    script = write_script(tmp_path, OVERWRITE)
    ckpt = tmpfs / "ckpt" / "last.pt"
    ckpt.parent.mkdir()
    home = tmpfs / "store"
    results = {}
    for agent in ("0", "1"):
        env = env_for(home, STORE=str(home), CKPT=str(ckpt), AGENT=agent)
        proc = z.run(script, env, tmp_path, timeout=180)
        assert proc.returncode == 0, proc.stdout[-3000:]
        ev = events(proc.stdout)
        results[agent] = ev
        assert ev[0]["ok"] == 20, (agent, ev)   # every user save succeeds, with or without us
        assert torch_value(ckpt) == 20
        if agent == "1":
            assert proc.stdout.count("was not captured") <= 1, proc.stdout[-3000:]
    sync(home, timeout=120)
    snaps = snapshots(open_catalog(home))
    assert len(snaps) == 20
    check_snapshots(snaps, home / "blobs")      # failed with a reason, or exactly its bytes
    assert torch_value(ckpt) == 20


STORE_FULL = """
    task = Task.init(project_name="faults", task_name="full", output_uri=os.environ["STORE"])
    worst = 0.0
    import time
    for i in range(1, 6):
        task.set_last_iteration(i)
        t0 = time.monotonic()
        torch.save(state(i, 4.0), f"m{i}.pt")
        worst = max(worst, time.monotonic() - t0)
    emit(worst=worst, stats=task.capture_stats)
"""


def test_store_on_full_tmpfs_checkpoints_elsewhere(z, tmp_path, tmpfs):
    home = tmpfs / "store"
    work = tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home), CLEARML_HOOKS_STAGING_MIN_FREE=str(1 << 20),
                  CLEARML_HOOKS_EXIT_TIMEOUT="4")
    # a first run creates the store, then the disk fills up
    home.mkdir()
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    proc = z.run(write_script(tmp_path, STORE_FULL), env, work, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert events(proc.stdout)[-1]["worst"] < 1.5
    for i in range(1, 6):
        assert torch_value(work / f"m{i}.pt") == i
    filler.unlink()                              # room again
    result = sync(home, timeout=120)
    assert not result["errors"], result
    snaps = snapshots(open_catalog(home))
    assert len(snaps) == 5
    counts = check_snapshots(snaps, home / "blobs")
    assert counts["ready"] == 5, snaps
    assert not hidden_staging(work)
