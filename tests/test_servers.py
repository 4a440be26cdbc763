"""The throwaway PostgreSQL and S3 servers of tests/servers.py start, answer real clients and stop."""

from __future__ import annotations

import importlib
import os
import socket
import uuid
from pathlib import Path

import pytest

try:
    from servers import ServerError, start_postgres, start_s3
except ImportError:  # tests/ imported as a package
    from tests.servers import ServerError, start_postgres, start_s3

STRICT = os.environ.get("CLEARML_HOOKS_STRICT") == "1"


def _require(module: str):
    """Import a client library; skip when absent, except in strict runs (CI), where that fails."""
    if STRICT:
        return importlib.import_module(module)
    return pytest.importorskip(module)


def _start_or_skip(fn, *args):
    try:
        return fn(*args)
    except ServerError as e:
        if STRICT or "not found" not in str(e):
            raise
        pytest.skip(str(e))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_postgres_starts_answers_and_stops(tmp_path):
    psycopg = _require("psycopg")
    pg = _start_or_skip(start_postgres, tmp_path / "pg")
    try:
        assert pg.url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/postgres"
        assert pg.is_running() and _listening(pg.port)
        with psycopg.connect(pg.dsn, connect_timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.execute("show listen_addresses").fetchone() == ("127.0.0.1",)
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (42)")
            assert conn.execute("select x from t").fetchone() == (42,)
    finally:
        pg.stop()
    assert not pg.is_running()
    assert not _listening(pg.port)
    assert not pg.datadir.exists()


def test_postgres_url_works_with_sqlalchemy(tmp_path):
    sqlalchemy = _require("sqlalchemy")
    _require("psycopg")
    with _start_or_skip(start_postgres, tmp_path / "pg") as pg:
        engine = sqlalchemy.create_engine(pg.url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
        finally:
            engine.dispose()
    assert not pg.is_running()


def test_two_postgres_servers_side_by_side(tmp_path):
    _require("psycopg")
    a = _start_or_skip(start_postgres, tmp_path / "a")
    try:
        b = start_postgres(tmp_path / "b")
        try:
            assert a.port != b.port
        finally:
            b.stop()
    finally:
        a.stop()


def test_s3_starts_answers_and_stops(tmp_path):
    s3fs = _require("s3fs")
    s3 = _start_or_skip(start_s3, tmp_path / "s3")
    try:
        assert s3.endpoint_url.startswith("http://127.0.0.1:")
        port = int(s3.endpoint_url.rsplit(":", 1)[1])
        assert s3.is_running() and _listening(port)
        bucket = s3.make_bucket("test-" + uuid.uuid4().hex[:8])
        assert s3.make_bucket(bucket) == bucket  # idempotent
        fs = s3fs.S3FileSystem(**s3.storage_options())
        payload = os.urandom(300_000)
        fs.pipe(f"{bucket}/models/model.bin", payload)
        assert fs.cat(f"{bucket}/models/model.bin") == payload
        assert fs.ls(f"{bucket}/models") == [f"{bucket}/models/model.bin"]
        # a wrong secret is refused: the server really checks credentials
        bad = s3fs.S3FileSystem(key=s3.key, secret="wrong", skip_instance_cache=True,
                                client_kwargs={"endpoint_url": s3.endpoint_url, "region_name": s3.region})
        with pytest.raises((PermissionError, OSError)):
            bad.cat(f"{bucket}/models/model.bin")
        sockets = [p for p in s3._ports for _ in Path("/tmp").glob(f"seaweedfs-*-grpc-{p}.sock")]
        assert sockets  # weed made its gRPC sockets in /tmp ...
    finally:
        s3.stop()
    assert not s3.is_running()
    assert not _listening(port)
    assert not [p for p in s3._ports  # ... and stop() removed them all
                if list(Path("/tmp").glob(f"seaweedfs-*-grpc-{p}.sock"))]
