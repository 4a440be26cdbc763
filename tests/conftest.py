"""Shared fixtures. Tests use real frameworks and real stores; nothing we integrate with is mocked."""

from __future__ import annotations

import importlib
import os
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
