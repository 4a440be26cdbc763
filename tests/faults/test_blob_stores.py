"""Blob stores under faults: the object under a sha256 key always has that sha256, reads verify,
and a frozen or silent S3 server makes a call fail within the configured timeouts.

Real SeaweedFS servers and real sockets; the servers a test freezes are its own, stopped by pid.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from clearml_hooks.store.blobs import BlobMismatch, FsspecBlobStore, LocalBlobStore

CHUNK = 1 << 20
ORIGINAL = b"A" * (3 * CHUNK + 17)
REWRITE = b"B" * (3 * CHUNK + 17)


class RewrittenMidRead(io.RawIOBase):
    """Reads a file, and after the first chunk another writer rewrites it in place."""

    def __init__(self, path: Path, new: bytes) -> None:
        self.path, self.new = path, new
        self.f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.reads += 1
        if self.reads == 1:
            with open(self.path, "r+b") as w:
                w.write(self.new)
        return data

    def close(self) -> None:
        self.f.close()
        super().close()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    return s3_server


@pytest.fixture
def s3_store(s3_env):
    import uuid

    bucket = s3_env.make_bucket("f" + uuid.uuid4().hex[:12])
    store = FsspecBlobStore(f"s3://{bucket}/blobs", skip_instance_cache=True)
    yield store
    store.fs.rm(bucket, recursive=True)


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    if request.param == "local":
        return LocalBlobStore(str(tmp_path / "blobs"))
    return request.getfixturevalue("s3_store")


def _read_object(store, sha: str) -> bytes:
    if isinstance(store, LocalBlobStore):
        return Path(store.path_for(sha)).read_bytes()
    return store.fs.cat_file(store._path(sha))


def _all_keys(store) -> list[str]:
    if isinstance(store, LocalBlobStore):
        return sorted(str(p.relative_to(store.root)) for p in Path(store.root).rglob("*")
                      if p.is_file())
    store.fs.invalidate_cache()
    return sorted(k[len(store.root) + 1:] for k in store.fs.find(store.root)
                  if k.startswith(store.root + "/"))


def test_store_stream_round_trip_leaves_no_temp(any_store, tmp_path):
    sha, size = any_store.store_stream(io.BytesIO(ORIGINAL))
    assert (sha, size) == (hashlib.sha256(ORIGINAL).hexdigest(), len(ORIGINAL))
    assert any_store.exists(sha)
    assert _all_keys(any_store) == [f"{sha[:2]}/{sha}"]
    again = any_store.store_stream(io.BytesIO(ORIGINAL))  # identical bytes: stored once
    assert again == (sha, size) and _all_keys(any_store) == [f"{sha[:2]}/{sha}"]
    dest = tmp_path / "dl" / "out.bin"
    dest.parent.mkdir()
    any_store.fetch(sha, str(dest))
    assert dest.read_bytes() == ORIGINAL
    assert os.listdir(dest.parent) == ["out.bin"]


def test_key_is_the_hash_of_the_bytes_uploaded_while_the_source_is_rewritten(any_store, tmp_path):
    src = tmp_path / "ckpt.pt"
    src.write_bytes(ORIGINAL)
    reader = RewrittenMidRead(src, REWRITE)
    try:
        sha, size = any_store.store_stream(reader)
    finally:
        reader.close()
    assert reader.reads > 1 and src.read_bytes() == REWRITE
    stored = _read_object(any_store, sha)
    assert hashlib.sha256(stored).hexdigest() == sha and len(stored) == size
    assert stored not in (ORIGINAL, REWRITE)  # a mix: stored under its own hash, not theirs
    for other in (ORIGINAL, REWRITE):
        assert not any_store.exists(hashlib.sha256(other).hexdigest())


@pytest.mark.parametrize("move", [False, True])
def test_put_never_stores_bytes_under_another_key(any_store, tmp_path, move):
    src = tmp_path / "staged.bin"
    src.write_bytes(REWRITE)
    claimed = hashlib.sha256(ORIGINAL).hexdigest()  # hashed before a rewrite
    with pytest.raises(BlobMismatch, match=claimed):
        any_store.put(str(src), claimed, move=move)
    assert not any_store.exists(claimed)
    assert _all_keys(any_store) == []
    assert src.read_bytes() == REWRITE, "a failed put leaves the caller's file as it was"
    right = hashlib.sha256(REWRITE).hexdigest()
    any_store.put(str(src), right, move=move)
    assert _read_object(any_store, right) == REWRITE
    assert src.exists() is not move


def test_local_put_move_does_not_adopt_a_shared_inode(tmp_path):
    store = LocalBlobStore(str(tmp_path / "blobs"))
    user = tmp_path / "user.pt"
    user.write_bytes(ORIGINAL)
    staged = tmp_path / "staged.pt"
    os.link(user, staged)
    sha = hashlib.sha256(ORIGINAL).hexdigest()
    store.put(str(staged), sha, move=True)
    blob = Path(store.path_for(sha))
    assert blob.stat().st_ino != user.stat().st_ino
    user.write_bytes(REWRITE)  # the user's later in-place write cannot reach the blob
    assert blob.read_bytes() == ORIGINAL


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_fetch_verifies(any_store, tmp_path, damage):
    sha, _ = any_store.store_stream(io.BytesIO(ORIGINAL))
    bad = bytearray(ORIGINAL)
    if damage == "flip":
        bad[CHUNK + 5] ^= 0x80
    else:
        del bad[CHUNK:]
    if isinstance(any_store, LocalBlobStore):
        Path(any_store.path_for(sha)).write_bytes(bytes(bad))
    else:
        any_store.fs.pipe_file(any_store._path(sha), bytes(bad))
    dest = tmp_path / "dl" / "dest.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"previous good copy")
    with pytest.raises(BlobMismatch, match=sha):
        any_store.fetch(sha, str(dest))
    assert dest.read_bytes() == b"previous good copy"
    assert os.listdir(dest.parent) == ["dest.bin"], "no temp left beside dest"
    # storing the right bytes again repairs a truncated object (a size check, no re-hash)
    if damage == "truncate":
        any_store.store_stream(io.BytesIO(ORIGINAL))
        any_store.fetch(sha, str(dest))
        assert dest.read_bytes() == ORIGINAL


def test_a_sha_is_never_a_path(any_store, tmp_path):
    for bad in ("../x", "../../../etc/passwd", "A" * 64):
        with pytest.raises(ValueError, match="not a sha256"):
            any_store.fetch(bad, str(tmp_path / "x"))
        with pytest.raises(ValueError, match="not a sha256"):
            any_store.exists(bad)


def test_temp_names_are_unique_per_call():
    from clearml_hooks.store.blobs import temp_name

    names = {temp_name() for _ in range(1000)}
    assert len(names) == 1000 and all(str(os.getpid()) in n for n in names)


def test_sweep_incoming_removes_old_temps_only(any_store):
    sha, _ = any_store.store_stream(io.BytesIO(b"kept"))
    if isinstance(any_store, LocalBlobStore):
        old = Path(any_store.root) / ".incoming-1-dead"
        old.write_bytes(b"left by a crash")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        (Path(any_store.root) / ".incoming-2-live").write_bytes(b"being written")
        assert any_store.sweep_incoming(older_than=3600) == 1
        assert not old.exists()
    else:
        any_store.fs.pipe_file(f"{any_store.root}/.incoming/up-1-dead", b"left by a crash")
        assert any_store.sweep_incoming(older_than=3600) == 0
        assert any_store.sweep_incoming(older_than=-60) == 1
    assert any_store.exists(sha)


# -- S3 that does not answer ----------------------------------------------------------------------

BOUND = 20.0  # 2 attempts x 1 s read timeout, backoff and cleanup skipped: far below this


def _short_timeouts(monkeypatch) -> None:
    monkeypatch.setenv("CLEARML_HOOKS_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("CLEARML_HOOKS_S3_READ_TIMEOUT", "1")


def _each_call_fails_fast(store, tmp_path: Path) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    calls = {
        "store_stream": lambda: store.store_stream(io.BytesIO(b"frozen")),
        "exists": lambda: store.exists(sha) and store.fetch(sha, str(tmp_path / "o")),
        "fetch": lambda: store.fetch(sha, str(tmp_path / "o")),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - any error, as long as it comes in time
            call()
        took = time.monotonic() - started
        assert took < BOUND, f"{name} took {took:.1f}s against a server that does not answer"
    assert not (tmp_path / "o").exists()


def test_frozen_s3_server_fails_within_the_timeout(tmp_path, monkeypatch):
    import uuid

    from tests.servers import start_s3

    _short_timeouts(monkeypatch)
    server = start_s3(tmp_path / "frozen-s3")
    frozen = False
    try:
        bucket = server.make_bucket("z" + uuid.uuid4().hex[:12])
        monkeypatch.setenv("CLEARML_HOOKS_S3_ENDPOINT_URL", server.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
        store = FsspecBlobStore(f"s3://{bucket}/blobs", skip_instance_cache=True)
        assert store.fs.config_kwargs["read_timeout"] == 1.0
        sha, _ = store.store_stream(io.BytesIO(b"before the freeze"))
        os.kill(server.pid, signal.SIGSTOP)
        frozen = True
        _each_call_fails_fast(store, tmp_path)
    finally:
        if frozen:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()
    assert not server.is_running()


def test_port_that_never_answers_fails_within_the_timeout(tmp_path, monkeypatch):
    _short_timeouts(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "silent")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "silentsecret")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # connections complete in the kernel; nobody ever accepts or reads
        port = listener.getsockname()[1]
        monkeypatch.setenv("CLEARML_HOOKS_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        store = FsspecBlobStore("s3://silent/blobs", skip_instance_cache=True)
        _each_call_fails_fast(store, tmp_path)
    finally:
        listener.close()


def test_timeouts_are_settings(monkeypatch):
    from clearml_hooks.config import SETTINGS_DOC
    from clearml_hooks.store.blobs import fsspec_options

    assert {"s3_connect_timeout", "s3_read_timeout"} <= set(SETTINGS_DOC)
    options = fsspec_options("s3://b/p")["config_kwargs"]
    assert (options["connect_timeout"], options["read_timeout"]) == (10.0, 20.0)
    monkeypatch.setenv("CLEARML_HOOKS_S3_READ_TIMEOUT", "7")
    assert fsspec_options("s3://b/p")["config_kwargs"]["read_timeout"] == 7.0
    monkeypatch.setenv("CLEARML_HOOKS_S3_READ_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="CLEARML_HOOKS_S3_READ_TIMEOUT"):
        fsspec_options("s3://b/p")
