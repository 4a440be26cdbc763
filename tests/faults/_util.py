"""Helpers of the capture fault suite: real processes, the real CLI, the real catalog.

Every check here is one of the three that the capture contract promises:

- nothing silently wrong: a ``ready`` snapshot's blob hashes to its key and holds exactly the
  bytes of the save it belongs to (saves put their index into the bytes, so a blob that holds
  another save's bytes is caught);
- no user file changed or deleted by the agent;
- nothing journaled lost: every save the script saw return is a snapshot that ends ``ready``
  or ``failed`` with a reason after ``sync``, with no journal or staging left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import REPO

PY = sys.executable

# A script prelude: a Task on the store given by CLEARML_HOOKS_HOME, and ``save(i, path, mb)``
# that torch.save's a state dict whose every byte of payload says ``i`` (and times it).
PRELUDE = textwrap.dedent("""
    import hashlib, json, os, signal, sys, time
    import torch
    from clearml_hooks import Task, OutputModel, Model

    def state(i, mb=1.0):
        n = max(1, int(mb * (1 << 20)) // 4)
        return {"i": torch.tensor(i), "w": torch.full((n,), i, dtype=torch.int32)}

    def serialized(i, mb, name):
        # the bytes torch.save writes for state(i, mb) into a file called name (the archive
        # inside is named after the file); call it before Task.init, so it is not captured
        import shutil, tempfile
        folder = tempfile.mkdtemp()
        target = os.path.join(folder, os.path.basename(name))
        torch.save(state(i, mb), target)
        with open(target, "rb") as f:
            data = f.read()
        shutil.rmtree(folder)
        return data

    def emit(**kw):
        print(json.dumps(kw), flush=True)
""")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_HOOKS_")}
    env.update({"CLEARML_HOOKS_HOME": str(home), "CLEARML_HOOKS_STRICT": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def write_script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def run(script: Path, env: dict, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(script)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def spawn(script: Path, env: dict, cwd: Path, out: Path) -> subprocess.Popen:
    f = open(out, "ab")  # noqa: SIM115 - the child holds it; closed by the caller via close_spawned
    proc = subprocess.Popen([PY, str(script)], env=env, cwd=cwd, stdout=f,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc._out = f  # type: ignore[attr-defined]
    return proc


def reap(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Stop a process we started, by its pid."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    out = getattr(proc, "_out", None)
    if out is not None:
        out.close()


def events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def cli(home: Path, *args: str, env: dict | None = None, timeout: float = 180) \
        -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "clearml_hooks", "--home", str(home), *args],
                          env=env or env_for(home), capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


def sync(home: Path, *extra: str, env: dict | None = None, timeout: float = 180) -> dict:
    proc = cli(home, "sync", "--json", *extra, env=env, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 1), (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return json.loads(proc.stdout)


def status(home: Path, env: dict | None = None) -> dict:
    proc = cli(home, "status", "--json", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def open_catalog(home: Path, catalog_url: str | None = None):
    """A fresh (not cached) catalog of the store at ``home``."""
    from clearml_hooks.store.catalog import SqlCatalog

    return SqlCatalog(catalog_url or "sqlite:///" + str(home / "catalog.db"))


def snapshots(catalog) -> list[dict]:
    """Every snapshot with its files (sha256, size) and its model's source path."""
    from sqlalchemy import select

    from clearml_hooks.store import schema as s

    with catalog.engine.connect() as conn:
        snaps = [dict(r) for r in conn.execute(
            select(s.snapshots, s.models.c.source.label("model_source"))
            .join(s.models, s.models.c.id == s.snapshots.c.model_id)).mappings()]
        files = [dict(r) for r in conn.execute(select(s.snapshot_files)).mappings()]
    by_id: dict[str, list[dict]] = {}
    for f in files:
        by_id.setdefault(f["snapshot_id"], []).append(f)
    for snap in snaps:
        snap["files"] = by_id.get(snap["id"], [])
    return snaps


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def blob_path(blob_root: Path, sha: str) -> Path:
    from clearml_hooks.store.blobs import LocalBlobStore

    return Path(LocalBlobStore(str(blob_root)).path_for(sha))


def torch_value(path: str | Path) -> int:
    """The save index a torch.save'd ``state(i)`` holds; raises if the bytes are not one save
    (torn, mixed or foreign)."""
    import torch

    sd = torch.load(str(path), weights_only=True)
    i = int(sd["i"])
    w = sd["w"]
    assert int(w.min()) == i and int(w.max()) == i, f"{path}: mixed content"
    return i


def check_snapshots(snaps: list[dict], blob_root: Path | None, *, expect: dict[str, int] | None
                    = None, read_value=torch_value) -> dict[str, int]:
    """Every snapshot is ready (its blob hashes to its key and holds the save whose index is
    its iteration, or ``expect[snapshot id]``) or failed with a reason. Returns the counts."""
    counts = {"ready": 0, "failed": 0}
    for snap in snaps:
        state = snap["state"]
        assert state in ("ready", "failed"), f"snapshot left {state}: {snap}"
        counts[state] += 1
        if state == "failed":
            assert snap["error"] and len(snap["error"]) > 10, f"failed without a reason: {snap}"
            continue
        assert snap["files"], snap
        for f in snap["files"]:
            assert f["sha256"], snap
            if blob_root is None:
                continue
            path = blob_path(blob_root, f["sha256"])
            assert path.exists(), f"ready snapshot {snap['id']} without its blob {path}"
            assert sha256_file(path) == f["sha256"], f"blob {path} does not hash to its key"
            assert path.stat().st_size == f["size"]
            want = (expect or {}).get(snap["id"], snap["iteration"])
            if read_value is not None and want is not None:
                got = read_value(path)
                assert got == want, (f"snapshot {snap['id']} (iteration {snap['iteration']}) is "
                                     f"ready with the bytes of save {got}, not {want}")
    return counts


def assert_drained(home: Path, env: dict | None = None) -> None:
    """Nothing pending, no journal, no staging left behind."""
    st = status(home, env)
    assert st["pending_snapshots"] == 0, st
    assert st["staging_bytes"] == 0, st
    staging = home / "staging"
    left = [str(p) for p in staging.rglob("*")] if staging.exists() else []
    assert not [p for p in left if os.path.isfile(p)], left


def hidden_staging(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".clearml-hooks-staging-*")]


def process_tree(pid: int) -> list[int]:
    """A server's pid and its children's (PostgreSQL's backends), to freeze or thaw together."""
    out = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def signal_all(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids`` that is still there (SIGSTOP / SIGCONT a server)."""
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def new_database(server, prefix: str = "f") -> str:
    """A fresh database on the test PostgreSQL ``server``: its SQLAlchemy URL."""
    import uuid

    import psycopg

    name = prefix + uuid.uuid4().hex[:12]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def mounted_tmpfs(parent: Path, size_mb: int, name: str = "tmpfs"):
    """A tmpfs of ``size_mb`` mounted at ``parent/name`` (a small disk that fills), unmounted
    afterwards. Skips the test where mounting is not allowed (not root)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = parent / name
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- a torch "zygote": import torch once (it takes 15+ s on a loaded 2-core machine), then fork a
# fresh child per script. Each child is a real, separate process (its own pid, journal, worker
# and exit), killed by its pid; clearml_hooks is first imported in the child, after the fork.

ZYGOTE = textwrap.dedent("""
    import faulthandler, json, os, runpy, select, signal, sys, traceback
    sys.path.insert(0, sys.argv[1])
    import torch  # noqa: F401 - the point of the zygote
    torch.set_num_threads(1)
    # One thread only: a fork while another thread holds a lock (sys.stdout's buffer lock, when
    # a reaper thread reported an exit) hands the child a lock nobody will release, and its
    # first print hangs. So children are reaped by this loop, between reads of stdin.
    def say(**kw):
        os.write(1, (json.dumps(kw) + "\\n").encode())
    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            say(exited=keys.pop(pid, str(pid)), pid=pid, rc=os.waitstatus_to_exitcode(status))
    keys = {}
    pending = b""
    say(ready=os.getpid())
    while True:
        if select.select([0], [], [], 0.02)[0]:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            pending += chunk
        reap()
        while b"\\n" in pending:
            line, pending = pending.split(b"\\n", 1)
            job = json.loads(line)
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    os.setsid()
                    fd = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
                    sys.stdin.close()
                    # a test that sees no progress sends SIGUSR1 and gets every thread's stack
                    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
                    os.chdir(job["cwd"])
                    os.environ.clear(); os.environ.update(job["env"])
                    sys.argv = [job["script"]]
                    runpy.run_path(job["script"], run_name="__main__")
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                except BaseException:
                    traceback.print_exc()
                    code = 1
                sys.stdout.flush(); sys.stderr.flush()
                # a normal interpreter exit (atexit handlers run: the agent's exit drain)
                raise SystemExit(code)
            keys[pid] = job["key"]
            say(started=job["key"], pid=pid)
""")


class Zygote:
    def __init__(self) -> None:
        import queue
        import tempfile
        import threading

        self.dir = Path(tempfile.mkdtemp(prefix="zygote-"))
        script = self.dir / "zygote.py"
        script.write_text(ZYGOTE)
        self.proc = subprocess.Popen([PY, str(script), str(REPO)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._n = 0
        self.exits: dict[str, int] = {}
        self._started: dict[str, int] = {}
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        with self._cv:
            assert self._cv.wait_for(lambda: "ready" in self._started, timeout=180), \
                "the torch zygote did not start"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            with self._cv:
                if "ready" in ev:
                    self._started["ready"] = ev["ready"]
                elif "started" in ev:
                    self._started[ev["started"]] = ev["pid"]
                elif "exited" in ev:
                    self.exits[ev["exited"]] = ev["rc"]
                self._cv.notify_all()

    def start(self, script: Path, env: dict, cwd: Path) -> tuple[str, int, Path]:
        """Fork a child running ``script``; returns (key, pid, output file)."""
        with self._lock:
            self._n += 1
            key = f"j{self._n}"
        out = Path(cwd) / f".out-{key}.txt"
        job = {"key": key, "script": str(script), "cwd": str(cwd), "env": env, "out": str(out)}
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        with self._cv:
            assert self._cv.wait_for(lambda: key in self._started, timeout=30)
            return key, self._started[key], out

    @staticmethod
    def stacks(pid: int, out: Path) -> str:
        """Every thread's stack of a child that makes no progress (faulthandler, on SIGUSR1)."""
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            return out.read_text() if out.exists() else ""
        time.sleep(1.0)
        return out.read_text() if out.exists() else ""

    def wait(self, key: str, timeout: float) -> int | None:
        with self._cv:
            self._cv.wait_for(lambda: key in self.exits, timeout=timeout)
            return self.exits.get(key)

    def run(self, script: Path, env: dict, cwd: Path, timeout: float = 120) \
            -> subprocess.CompletedProcess:
        key, pid, out = self.start(script, env, cwd)
        rc = self.wait(key, timeout)
        if rc is None:
            os.kill(pid, signal.SIGKILL)
            self.wait(key, 10)
            raise subprocess.TimeoutExpired(str(script), timeout, out.read_text())
        text = out.read_text()
        out.unlink()
        return subprocess.CompletedProcess([str(script)], rc, text, text)

    def stop(self) -> None:
        import shutil

        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


_zygote: Zygote | None = None


def zygote(request) -> Zygote:
    """The session's torch zygote (started on first use, stopped when the session ends)."""
    global _zygote
    if _zygote is None or _zygote.proc.poll() is not None:
        _zygote = Zygote()
        z = _zygote
        request.session.config.add_cleanup(z.stop)
    return _zygote
