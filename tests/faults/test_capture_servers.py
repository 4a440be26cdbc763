"""The training thread never waits on the catalog or the object store (contract clause 7).

Our own PostgreSQL and SeaweedFS servers (never the session-wide ones), killed, frozen with
SIGSTOP (always SIGCONT in finally) or replaced by a port that accepts and never answers: each
torch.save stays fast, the run exits within its exit timeout, and once the server is back
``clearml-hooks sync`` stores everything, with every object's content matching its sha key.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
import uuid

import pytest

from tests.faults._util import (
    check_snapshots,
    env_for,
    events,
    new_database,
    open_catalog,
    process_tree,
    signal_all,
    snapshots,
    status,
    sync,
    write_script,
)

SAVES = """
    task = Task.init(project_name="faults", task_name="srv", output_uri=os.environ.get("OUT"))
    worst = 0.0
    for i in range(1, 7):
        task.set_last_iteration(i)
        t0 = time.monotonic()
        torch.save(state(i, 0.02 if i % 3 == 0 else 2.0), f"m{i}.pt")
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.3)
    emit(worst=worst, stats=task.capture_stats)
"""

EXIT_TIMEOUT = 4









def _run_timed(z, tmp_path, env):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    t0 = time.monotonic()
    proc = z.run(write_script(tmp_path, SAVES), env, work, timeout=120)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:]
    ev = events(proc.stdout)[-1]
    return ev, wall


@pytest.mark.parametrize("fault", ["killed", "frozen", "silent-port"])
def test_catalog_down_never_blocks_saves(z, tmp_path, fault):
    from tests.servers import start_postgres

    home = tmp_path / "local"
    server = start_postgres(tmp_path / "pg")
    frozen = False
    listener = None
    try:
        url = new_database(server)
        if fault == "killed":
            run_url = url
            os.kill(server.pid, signal.SIGKILL)
            server.process.wait(10)
        elif fault == "frozen":
            run_url = url
            signal_all(process_tree(server.pid), signal.SIGSTOP)
            frozen = True
        else:
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)  # accepts (the kernel does) and never answers
            run_url = f"postgresql+psycopg://u@127.0.0.1:{listener.getsockname()[1]}/x"
        env = env_for(home, CLEARML_HOOKS_CATALOG_URL=run_url, CLEARML_HOOKS_CATALOG_TIMEOUT="2",
                      CLEARML_HOOKS_EXIT_TIMEOUT=str(EXIT_TIMEOUT))
        ev, wall = _run_timed(z, tmp_path, env)
        assert ev["worst"] < 1.0, ev            # no save waited on the catalog
        assert wall < EXIT_TIMEOUT + 6 * 0.3 + 15, wall  # exit waited a bounded time
        st = status(home, env)
        assert st["pending_snapshots"] == 6, st  # nothing lost: all waiting in the journal
        # the catalog is back
        if fault == "killed":
            server.stop()
            server = start_postgres(tmp_path / "pg2")
            url = new_database(server)
        elif fault == "frozen":
            signal_all(process_tree(server.pid), signal.SIGCONT)
            frozen = False
        env["CLEARML_HOOKS_CATALOG_URL"] = url
        result = sync(home, env=env, timeout=120)
        assert not result["errors"], result
        snaps = snapshots(open_catalog(home, url))
        assert len(snaps) == 6
        counts = check_snapshots(snaps, home / "blobs")
        assert counts["ready"] == 6, snaps
        assert status(home, env)["pending_snapshots"] == 0
    finally:
        if frozen:
            signal_all(process_tree(server.pid), signal.SIGCONT)
        if listener is not None:
            listener.close()
        server.stop()


def _s3_objects(server, bucket: str) -> dict[str, bytes]:
    import s3fs

    fs = s3fs.S3FileSystem(**server.storage_options())
    out = {}
    for path in fs.find(bucket):
        out[path] = fs.cat_file(path)
    return out


@pytest.mark.parametrize("fault", ["frozen", "killed"])
def test_object_store_down_never_blocks_saves(z, tmp_path, fault):
    from tests.servers import start_s3

    home = tmp_path / "local"
    server = start_s3(tmp_path / "s3")
    frozen = False
    try:
        bucket = server.make_bucket("b" + uuid.uuid4().hex[:10])
        env = env_for(home, CLEARML_HOOKS_BLOB_URL=f"s3://{bucket}/models",
                      CLEARML_HOOKS_S3_ENDPOINT_URL=server.endpoint_url,
                      AWS_ACCESS_KEY_ID=server.key, AWS_SECRET_ACCESS_KEY=server.secret,
                      CLEARML_HOOKS_S3_CONNECT_TIMEOUT="2", CLEARML_HOOKS_S3_READ_TIMEOUT="3",
                      CLEARML_HOOKS_EXIT_TIMEOUT=str(EXIT_TIMEOUT))
        if fault == "frozen":
            signal_all(process_tree(server.pid), signal.SIGSTOP)
            frozen = True
        else:
            workdir = server.workdir
            server.stop(remove_data=False)
        ev, wall = _run_timed(z, tmp_path, env)
        assert ev["worst"] < 1.0, ev
        assert wall < EXIT_TIMEOUT + 6 * 0.3 + 20, wall
        if fault == "frozen":
            signal_all(process_tree(server.pid), signal.SIGCONT)
            frozen = False
        else:
            server = start_s3(workdir)
            server.make_bucket(bucket)
            env["CLEARML_HOOKS_S3_ENDPOINT_URL"] = server.endpoint_url
        result = sync(home, env=env, timeout=150)
        assert not result["errors"], result
        snaps = snapshots(open_catalog(home))
        assert len(snaps) == 6
        counts = check_snapshots(snaps, None)
        assert counts["ready"] == 6, snaps
        objects = _s3_objects(server, bucket)
        keys = {f["sha256"] for s in snaps for f in s["files"]}
        seen = set()
        for path, data in objects.items():
            name = path.rsplit("/", 1)[-1]
            if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                assert hashlib.sha256(data).hexdigest() == name, path  # content matches key
                seen.add(name)
        assert keys <= seen, (keys - seen, list(objects))
        assert status(home, env)["pending_snapshots"] == 0
    finally:
        if frozen:
            signal_all(process_tree(server.pid), signal.SIGCONT)
        server.stop()
