"""Shared fixtures. Tests use real frameworks and real stores; nothing we integrate with is mocked."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    os.environ.setdefault("CLEARML_HOOKS_STRICT", "1")
    required = os.environ.get("CLEARML_HOOKS_REQUIRE_FRAMEWORK", "")
    for name in filter(None, (n.strip() for n in required.split(","))):
        # a broken install must fail the run, never skip it
        importlib.import_module(name)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep HOME-writing libraries (matplotlib, MegEngine) and our default store out of ~."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("MPLCONFIGDIR", str(home / ".mpl"))
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "default-store"))
    monkeypatch.delenv("CLEARML_HOOKS_DISABLED", raising=False)
    yield
    from clearml_hooks.task import Task

    current = Task.current_task()
    if current is not None:
        current.close()


@pytest.fixture
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def task(store_dir, request):
    """An open Task on a fresh embedded store; closed after the test."""
    from clearml_hooks import Task

    t = Task.init(project_name="tests", task_name=request.node.name[:100],
                  output_uri=str(store_dir))
    yield t
    t.close()


def run_script(script: str | Path, *args: str, env: dict | None = None, cwd: Path | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a Python script in a fresh interpreter (exit, kill, fork and framework scripts)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(script), *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A throwaway PostgreSQL on 127.0.0.1 for the whole session."""
    from tests.servers import start_postgres

    server = start_postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A throwaway S3-compatible server (SeaweedFS) on 127.0.0.1 for the whole session."""
    from tests.servers import start_s3

    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def team_store(pg_server, s3_server, monkeypatch, tmp_path):
    """Point the agent at PostgreSQL + S3 (a fresh database and bucket per test)."""
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    bucket = "b" + uuid.uuid4().hex[:12]
    s3_server.make_bucket(bucket)
    url = pg_server.url.rsplit("/", 1)[0] + "/" + name
    monkeypatch.setenv("CLEARML_HOOKS_CATALOG_URL", url)
    monkeypatch.setenv("CLEARML_HOOKS_BLOB_URL", f"s3://{bucket}/models")
    monkeypatch.setenv("CLEARML_HOOKS_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "local"))
    return {"catalog_url": url, "bucket": bucket}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's ``browser`` on Debian's chromium (Playwright's own browser download
    is not reachable here; .ci/run installs chromium). A skipped browser test is a failed one."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium")
    return {**browser_type_launch_args, "executable_path": executable, "headless": True,
            "args": ["--no-sandbox"]}


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    """A SQLite catalog in the test's own store, which CLEARML_HOOKS_HOME names for children
    (the events and watch tests; a module may override it)."""
    from clearml_hooks.store.catalog import SqlCatalog

    home = tmp_path / "store"
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(home))
    cat = SqlCatalog(f"sqlite:///{home}/catalog.db")
    yield cat
    cat.close()
