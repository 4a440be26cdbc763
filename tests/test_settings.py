"""Every documented setting works from the config file, from ``CLEARML_HOOKS_<NAME>`` and from
``Task.init(settings=)``, with that precedence (Task.init > environment > file > default), and
each one changes the behaviour a user relies on. One reader: ``clearml_hooks.config``.

Each test is parametrized by ``source``:

- ``file``: only the config file sets the value;
- ``env``: the file says something else, the environment wins;
- ``init``: the environment says something else, ``Task.init(settings=)`` wins.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from clearml_hooks import Task, config
from clearml_hooks.config import SETTINGS_DOC, Settings

SOURCES = ("file", "env", "init")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Sources:
    """Puts one setting's value where a test says, and the other value one level below."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = tmp_path / "clearml-hooks.toml"
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("CLEARML_HOOKS_CONFIG", str(self.path))
        for name in SETTINGS_DOC:
            if name not in ("home", "strict"):
                monkeypatch.delenv("CLEARML_HOOKS_" + name.upper(), raising=False)

    def write(self, values: dict[str, object]) -> None:
        self.path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))

    def put(self, source: str, name: str, value: object, other: object) -> dict | None:
        """Returns what to pass as ``Task.init(settings=)``."""
        env = "CLEARML_HOOKS_" + name.upper()
        if source == "file":
            self.monkeypatch.delenv(env, raising=False)
            self.write({name: value})
            return None
        if source == "env":
            self.write({name: other})
            self.monkeypatch.setenv(env, _env(value))
            return None
        self.write({})
        self.monkeypatch.setenv(env, _env(other))
        return {name: value}


def _env(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


@pytest.fixture
def sources(tmp_path, monkeypatch) -> Sources:
    return Sources(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _restore_logging():
    logger = logging.getLogger("clearml_hooks")
    level, handlers = logger.level, list(logger.handlers)
    yield
    config.set_task_values(None)
    logger.setLevel(level)
    for handler in logger.handlers[:]:
        if handler not in handlers:
            logger.removeHandler(handler)
    config._handler = None


def _init(store: Path | None, settings: dict | None, **kwargs) -> Task:
    return Task.init(project_name="settings", task_name="t",
                     output_uri=str(store) if store else None, settings=settings, **kwargs)


def test_every_setting_is_tested_here():
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    assert set(SETTINGS_DOC) <= tested


def test_readme_documents_every_setting():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in SETTINGS_DOC:
        assert f"| {name} | `CLEARML_HOOKS_{name.upper()}`" in readme, name


# -- where the store is ------------------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_home(source, sources, tmp_path, monkeypatch):
    """The embedded store (catalog.db) lives in ``home``."""
    wanted, other = tmp_path / "wanted", tmp_path / "other"
    monkeypatch.delenv("CLEARML_HOOKS_HOME")
    settings = sources.put(source, "home", str(wanted), str(other))
    task = _init(None, settings)
    assert task.store.home == str(wanted)
    task.store.wait()
    assert (wanted / "catalog.db").is_file() and not other.exists()


@pytest.mark.parametrize("source", SOURCES)
def test_catalog_url(source, sources, tmp_path):
    wanted, other = tmp_path / "wanted.db", tmp_path / "other.db"
    settings = sources.put(source, "catalog_url", f"sqlite:///{wanted}", f"sqlite:///{other}")
    task = _init(tmp_path / "store", settings)
    task.wait_registered()
    assert wanted.is_file() and not other.exists()
    assert task.store.catalog.get_task(task.id)["name"] == "t"


@pytest.mark.parametrize("source", SOURCES)
def test_blob_url(source, sources, tmp_path):
    """A captured model's bytes land in ``blob_url``."""
    wanted, other = tmp_path / "wanted-blobs", tmp_path / "other-blobs"
    settings = sources.put(source, "blob_url", str(wanted), str(other))
    task = _init(tmp_path / "store", settings)
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")
    assert task.flush(wait_for_uploads=True, timeout=60)
    assert [p for p in wanted.rglob("*") if p.is_file()]
    assert not other.exists()


# -- capture and exit --------------------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_exit_timeout(source, sources, tmp_path):
    """The bound of the exit wait (``Task.close()`` without a timeout, at exit)."""
    settings = sources.put(source, "exit_timeout", 7.5, 99)
    task = _init(tmp_path / "store", settings)
    assert task.settings.exit_timeout == 7.5
    assert config.get("exit_timeout") == 7.5  # what the atexit hook reads


@pytest.mark.parametrize("source", SOURCES)
def test_offline(source, sources, tmp_path, caplog):
    """Offline: captures are journaled only; closing says so and stores nothing."""
    settings = sources.put(source, "offline", True, False)
    task = _init(tmp_path / "store", settings)
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")
    with caplog.at_level(logging.WARNING, logger="clearml_hooks"):
        task.close()
    assert "clearml-hooks sync" in caplog.text
    assert not (tmp_path / "store" / "blobs").exists() or not [
        p for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()]


@pytest.mark.parametrize("source", SOURCES)
def test_disabled(source, sources, tmp_path):
    """``disabled = "pytorch"`` leaves torch.save uncaptured; the other value does not."""
    settings = sources.put(source, "disabled", "pytorch", "xgboost")
    task = _init(tmp_path / "store", settings)
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")
    assert task.capture_stats.get("saves", 0) == 0
    task.close()
    sources.put(source, "disabled", "xgboost", "pytorch")
    task = Task.init(project_name="settings", task_name="t2", output_uri=str(tmp_path / "store"),
                     settings={"disabled": "xgboost"} if source == "init" else None)
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")
    assert task.capture_stats.get("saves", 0) == 1


def test_disabled_accepts_a_toml_list(sources, tmp_path):
    sources.write({"disabled": ["xgboost", "pytorch"]})
    task = _init(tmp_path / "store", None)
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")
    assert task.capture_stats.get("saves", 0) == 0


def _agent_error_raises() -> bool:
    from clearml_hooks.hooks import contract

    try:
        try:
            raise RuntimeError("a failure inside the agent")
        except RuntimeError:
            contract.agent_error("test_settings")
    except RuntimeError:
        return True
    return False


@pytest.mark.parametrize("source", SOURCES)
def test_strict(source, sources, tmp_path, monkeypatch):
    """Strict from any source makes agent errors raise; off, they are only logged."""
    monkeypatch.delenv("CLEARML_HOOKS_STRICT")
    settings = sources.put(source, "strict", True, False)
    _init(tmp_path / "store", settings)
    assert _agent_error_raises()
    Task.current_task().close()
    sources.put(source, "strict", False, True)
    Task.init(project_name="settings", task_name="t2", output_uri=str(tmp_path / "store"),
              settings={"strict": False} if source == "init" else None)
    assert not _agent_error_raises()


@pytest.mark.parametrize("source", SOURCES)
def test_capture_all_ranks(source, sources, tmp_path, monkeypatch):
    """Rank 1 of a torchrun job captures only with ``capture_all_ranks``."""
    monkeypatch.setenv("RANK", "1")
    settings = sources.put(source, "capture_all_ranks", True, False)
    task = _init(tmp_path / "store", settings)
    assert not task.inert
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")
    assert task.capture_stats.get("saves", 0) == 1
    task.close()
    sources.put(source, "capture_all_ranks", False, True)
    task = Task.init(project_name="settings", task_name="t2", output_uri=str(tmp_path / "store"),
                     settings={"capture_all_ranks": False} if source == "init" else None)
    assert task.inert


def _captures_in_a_forked_child() -> bool:
    from clearml_hooks.hooks import process

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, running no cleanup of the parent's
        os.close(read)
        os.write(write, b"1" if process.capture_allowed() else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    return answer == b"1"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("source", SOURCES)
def test_capture_in_workers(source, sources, tmp_path, monkeypatch):
    """A forked child (a DataLoader worker's kind of process) captures only when asked."""
    monkeypatch.delenv("CLEARML_HOOKS_FORKSERVER_PID", raising=False)
    settings = sources.put(source, "capture_in_workers", True, False)
    _init(tmp_path / "store", settings)
    assert _captures_in_a_forked_child()
    Task.current_task().close()
    sources.put(source, "capture_in_workers", False, True)
    Task.init(project_name="settings", task_name="t2", output_uri=str(tmp_path / "store"),
              settings={"capture_in_workers": False} if source == "init" else None)
    assert not _captures_in_a_forked_child()


# -- S3 ------------------------------------------------------------------------------------------

def _s3_options() -> dict:
    from clearml_hooks.store.blobs import fsspec_options

    return fsspec_options("s3://bucket/prefix")


@pytest.mark.parametrize("source", SOURCES)
def test_s3_endpoint_url(source, sources, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    settings = sources.put(source, "s3_endpoint_url", "http://127.0.0.1:8333",
                           "http://other:9000")
    _init(tmp_path / "store", settings)
    assert _s3_options()["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:8333"


@pytest.mark.parametrize("source", SOURCES)
def test_s3_connect_timeout(source, sources, tmp_path):
    settings = sources.put(source, "s3_connect_timeout", 3, 44)
    _init(tmp_path / "store", settings)
    assert _s3_options()["config_kwargs"]["connect_timeout"] == 3.0


@pytest.mark.parametrize("source", SOURCES)
def test_s3_read_timeout(source, sources, tmp_path):
    settings = sources.put(source, "s3_read_timeout", 4.5, 44)
    _init(tmp_path / "store", settings)
    assert _s3_options()["config_kwargs"]["read_timeout"] == 4.5


# -- the capture pipeline ----------------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_inline_max(source, sources, tmp_path):
    """A file up to ``inline_max`` bytes is copied into the journal at once; 0 turns it off."""
    settings = sources.put(source, "inline_max", 0, 1 << 20)
    task = _init(tmp_path / "store", settings)
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")  # ~1 KB
    assert task.capture_stats.get("saves") == 1
    assert task.capture_stats.get("staged_inline", 0) == 0


@pytest.mark.parametrize("source", SOURCES)
def test_staging_min_free(source, sources, tmp_path):
    """A filesystem that would keep less than ``staging_min_free`` free stages nothing."""
    settings = sources.put(source, "staging_min_free", 1 << 60, 0)
    task = _init(tmp_path / "store", {**(settings or {}), "inline_max": 0})
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")
    assert task.capture_stats.get("not_staged") == 1


@pytest.mark.parametrize("source", SOURCES)
def test_journal_fsync(source, sources, tmp_path):
    settings = sources.put(source, "journal_fsync", True, False)
    task = _init(tmp_path / "store", settings)
    assert task.store.journal.fsync is True


@pytest.mark.parametrize("source", SOURCES)
def test_job_timeout(source, sources, tmp_path):
    settings = sources.put(source, "job_timeout", 42, 600)
    task = _init(tmp_path / "store", settings)
    assert task.store.worker.job_timeout == 42.0


@pytest.mark.parametrize("source", SOURCES)
def test_catalog_timeout(source, sources, tmp_path):
    settings = sources.put(source, "catalog_timeout", 12, 30)
    task = _init(tmp_path / "store", settings)
    assert task.store.catalog.timeout == 12.0


@pytest.mark.parametrize("source", SOURCES)
def test_log_level(source, sources, tmp_path, caplog):
    """DEBUG shows the agent's debug lines; the other value (ERROR) hides even its warnings."""
    caplog.set_level(logging.NOTSET)  # the root handler takes everything the logger lets out
    logging.getLogger("clearml_hooks").setLevel(logging.NOTSET)
    settings = sources.put(source, "log_level", "debug", "error")
    _init(tmp_path / "store", settings, reuse_last_task_id=False)
    assert logging.getLogger("clearml_hooks").level == logging.DEBUG
    assert "reuse_last_task_id" in caplog.text
    Task.current_task().close()
    caplog.clear()
    sources.put(source, "log_level", "error", "debug")
    Task.init(project_name="settings", task_name="t2", output_uri=str(tmp_path / "store"),
              reuse_last_task_id=False,
              settings={"log_level": "error"} if source == "init" else None)
    logging.getLogger("clearml_hooks").warning("a warning of the agent")
    assert caplog.text == ""


# -- precedence over the default, and bad values -------------------------------------------------

def test_defaults_without_any_source(sources, tmp_path):
    sources.write({})
    settings = Settings.resolve(output_uri=str(tmp_path / "store"))
    assert (settings.exit_timeout, settings.inline_max, settings.job_timeout) == (120.0, 65536,
                                                                                 600.0)
    assert config.get("disabled") == frozenset() and config.get("log_level") == logging.WARNING


@pytest.mark.parametrize("name, bad", [
    ("inline_max", "lots"), ("exit_timeout", "-1"), ("s3_read_timeout", "soon"),
    ("strict", "maybe"), ("log_level", "LOUD"), ("job_timeout", "0"),
    # values that parse but would break the run: every job "timed out", a driver overflow,
    # whole checkpoints read in the training thread, a level logging does not have
    ("job_timeout", "1e-300"), ("catalog_timeout", "1e300"), ("s3_connect_timeout", "0.001"),
    ("inline_max", str(1 << 30)), ("log_level", "-1"), ("log_level", str(10 ** 30)),
])
def test_a_bad_value_names_the_setting_its_source_and_what_is_expected(name, bad, sources,
                                                                        tmp_path, monkeypatch):
    env = "CLEARML_HOOKS_" + name.upper()
    monkeypatch.setenv(env, bad)
    with pytest.raises(ValueError) as info:
        _init(tmp_path / "store", None)
    message = str(info.value)
    assert name in message and env in message and "expected" in message
    assert Task.current_task() is None
    monkeypatch.delenv(env)
    sources.write({name: bad})
    with pytest.raises(ValueError) as info:
        _init(tmp_path / "store", None)
    assert name in str(info.value) and str(sources.path) in str(info.value)
    sources.write({})
    with pytest.raises(ValueError, match=r"Task.init\(settings=...\)"):
        _init(tmp_path / "store", {name: bad})
    assert Task.current_task() is None


def test_an_unknown_name_in_task_init_settings_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown setting.*inline_maxx.*known: home"):
        _init(tmp_path / "store", {"inline_maxx": 1})


def test_task_init_settings_end_with_the_task(sources, tmp_path):
    sources.write({})
    task = _init(tmp_path / "store", {"inline_max": 5})
    assert config.get("inline_max") == 5
    task.close()
    assert config.get("inline_max") == 65536


def test_the_config_file_is_read_again_when_it_changes(sources):
    sources.write({"job_timeout": 5})
    assert config.get("job_timeout") == 5.0
    sources.write({"job_timeout": 50})
    assert config.get("job_timeout") == 50.0


@pytest.mark.parametrize("name, bad, listed", [
    ("catalog_url", "mysql://root:secret@db/models", "postgresql, sqlite"),
    ("blob_url", "ftpx://host/models", "s3"),
])
def test_a_url_without_a_registered_store_is_refused_at_task_init(name, bad, listed, sources,
                                                                   tmp_path):
    sources.write({name: bad})
    with pytest.raises(ValueError) as info:
        _init(tmp_path / "store", None)
    message = str(info.value)
    assert name in message and listed in message and "secret" not in message


def test_task_init_settings_reach_the_python_children_of_the_task(sources, tmp_path):
    """A spawned rank or worker joins the task: it must use the task's settings too."""
    import subprocess
    import sys

    sources.write({})
    code = "from clearml_hooks import config; print(config.get('capture_all_ranks'))"
    task = _init(tmp_path / "store", {"capture_all_ranks": True})
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.stdout.strip() == "True", child.stderr
    task.close()
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.stdout.strip() == "False", child.stderr


def test_an_unknown_framework_key_in_disabled_is_a_warning_naming_the_keys(sources, tmp_path,
                                                                          caplog):
    sources.write({"disabled": "pytorhc"})
    with caplog.at_level(logging.WARNING, logger="clearml_hooks"):
        _init(tmp_path / "store", None)
    assert "pytorhc" in caplog.text and "pytorch" in caplog.text
    assert str(sources.path) in caplog.text


def test_an_unknown_key_in_the_file_is_a_warning_once(sources, caplog):
    sources.write({"inline_maxx": 5})
    with caplog.at_level(logging.WARNING, logger="clearml_hooks"):
        for _ in range(3):
            assert config.get("inline_max") == 65536
    assert caplog.text.count("inline_maxx") == 1


@pytest.mark.parametrize("where", ["init", "file"])
def test_an_empty_value_falls_through_to_the_next_source(where, sources, tmp_path, monkeypatch):
    """As an empty environment variable does: ``home = ""`` in settings= or in the file is
    "not set", so CLEARML_HOOKS_HOME (or the file below settings=) still applies."""
    wanted = tmp_path / "wanted"
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(wanted))
    sources.write({"home": "   "} if where == "file" else {})
    task = _init(None, {"home": ""} if where == "init" else None)
    try:
        assert task.store.home == str(wanted)
    finally:
        task.close()


@pytest.mark.parametrize("bad", ["x", ["exit_timeout"], {1: 2}])
def test_a_settings_argument_that_is_not_a_dict_of_names_says_so(bad, tmp_path):
    with pytest.raises(ValueError, match=r"settings="):
        _init(tmp_path / "store", bad)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_a_config_file_named_but_unreadable_is_a_warning(kind, sources, caplog, tmp_path):
    """CLEARML_HOOKS_CONFIG names a file on purpose: a typo must not silently drop every
    setting."""
    if kind == "folder":
        sources.path.mkdir()
    with caplog.at_level(logging.WARNING, logger="clearml_hooks"):
        for _ in range(2):
            assert config.get("inline_max") == 65536
    assert caplog.text.count(str(sources.path)) == 1
