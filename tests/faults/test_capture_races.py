"""Races against a live run (contract clause 7): ``sync --force`` and ``Model.remove``."""

from __future__ import annotations

from tests.faults._util import (
    check_snapshots,
    cli,
    env_for,
    open_catalog,
    snapshots,
    sync,
    write_script,
)

LIVE = """
    task = Task.init(project_name="faults", task_name="live", output_uri=os.environ["STORE"])
    for i in range(1, 41):
        task.set_last_iteration(i)
        path = f"m{i}.pt" if i % 4 else "same.pt"
        if i % 8 == 4 and i > 4:      # a path written in place before: copied from then on
            with open("same.pt", "r+b") as f:
                f.write(b"x")
        torch.save(state(i, 3.0 if i % 5 else 0.01), path)
        time.sleep(0.05)
    task.flush(wait_for_uploads=True, timeout=90)
    emit(done=1)
"""


def test_sync_force_racing_a_live_run(z, tmp_path):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home))
    key, pid, out = z.start(write_script(tmp_path, LIVE), env, work)
    seen: dict[str, str] = {}
    try:
        while z.wait(key, 0.1) is None:
            proc = cli(home, "sync", "--force", "--json", timeout=120)
            assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
            if not (home / "catalog.db").exists():
                continue
            for snap in snapshots(open_catalog(home)):
                if snap["state"] == "ready":
                    assert seen.setdefault(snap["id"], snap["digest"]) == snap["digest"], snap
                else:
                    assert snap["id"] not in seen, f"ready snapshot changed: {snap}"
    finally:
        if z.wait(key, 120) is None:
            import os
            import signal
            os.kill(pid, signal.SIGKILL)
    assert z.exits[key] == 0, out.read_text()[-3000:]
    sync(home)
    snaps = snapshots(open_catalog(home))
    check_snapshots(snaps, home / "blobs")
    for snap in snaps:
        if snap["state"] == "failed":  # only an in-place write may fail one, never the race
            assert "rewritten in place" in snap["error"] or "bytes were saved" in snap["error"], snap
        if snap["state"] == "ready":
            assert seen.get(snap["id"], snap["digest"]) == snap["digest"]
    by_it = {s["iteration"]: s for s in snaps}
    for i in range(1, 41):
        if i % 4:
            assert by_it[i]["state"] == "ready", by_it[i]


REMOVE_RACE = """
    from clearml_hooks import Model
    task = Task.init(project_name="faults", task_name="gc", output_uri=os.environ["STORE"])
    payload = os.urandom(300_000)
    bad = []
    for i in range(25):
        a, b = f"a{i}.bin", f"b{i}.bin"
        for p in (a, b):
            with open(p, "wb") as f:
                f.write(payload + bytes([i]))
        first = OutputModel(task=task, name=f"first{i}")
        first.update_weights(a, async_enable=False)
        second = OutputModel(task=task, name=f"second{i}")
        second.update_weights(b, async_enable=True)   # same bytes: dedup onto first's blob
        if i % 2:
            time.sleep(0.001 * (i % 7))
        Model.remove(first.id, force=True)            # races the dedup
        assert OutputModel.wait_for_uploads(timeout=60)
        try:
            path = Model(second.id).get_local_copy(raise_on_error=True)
            with open(path, "rb") as f:
                assert f.read() == payload + bytes([i])
        except Exception as exc:
            bad.append(f"{i}: {exc!r}"[:300])
    emit(bad=bad)
"""


def test_model_remove_racing_dedup(z, tmp_path):
    home, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    env = env_for(home, STORE=str(home))
    proc = z.run(write_script(tmp_path, REMOVE_RACE), env, work, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:]
    from tests.faults._util import events
    assert events(proc.stdout)[-1]["bad"] == []
    snaps = snapshots(open_catalog(home))
    check_snapshots(snaps, home / "blobs", read_value=None)
