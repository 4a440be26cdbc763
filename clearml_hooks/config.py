"""Settings: one reader. ``Task.init`` arguments > ``CLEARML_HOOKS_*`` environment > config file >
defaults.

Every setting has one name; the environment variable is ``CLEARML_HOOKS_`` + the name in upper
case, the config file key is the name itself (TOML, ``~/.config/clearml-hooks/config.toml`` or
``$CLEARML_HOOKS_CONFIG``). Every module reads settings through ``get`` (hooks re-read them on
each use, so the cheap ones stay dict lookups plus one ``stat`` of the config file); ``Settings``
is the store's snapshot of them, taken once per ``Task.init``.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

ENV_PREFIX = "CLEARML_HOOKS_"
DEFAULT_EXIT_TIMEOUT = 120.0

# URL schemes of the blob stores this package registers (pyproject entry points); a third
# party can add more through the ``clearml_hooks.blob_stores`` group
BUILTIN_BLOB_SCHEMES = ("file", "s3", "gs", "az", "abfs", "memory")

SETTINGS_DOC: dict[str, str] = {
    "home": "store directory of the embedded store (catalog.db, blobs/, staging/); default ~/.clearml-hooks",
    "catalog_url": "SQLAlchemy URL of the catalog; default sqlite:///<home>/catalog.db",
    "blob_url": "where model bytes go: a folder or an fsspec URL (s3://bucket/prefix); default <home>/blobs",
    "exit_timeout": "seconds to wait at exit for snapshots still being stored (default 120)",
    "offline": "1: journal captures only; `clearml-hooks sync` stores them later",
    "disabled": "comma-separated framework keys to switch off, or *",
    "strict": "1: agent errors raise (for tests) instead of being logged",
    "capture_all_ranks": "1: capture on every distributed rank, not only rank 0",
    "capture_in_workers": "1: capture in forked children and DataLoader workers too",
    "s3_endpoint_url": "endpoint of an S3-compatible server (SeaweedFS, MinIO)",
    "s3_connect_timeout": "seconds an S3 call may wait to connect (default 10)",
    "s3_read_timeout": "seconds an S3 call may wait for an answer (default 20); with 2 attempts "
                       "a frozen or silent server fails a call within about a minute",
    "inline_max": "bytes: a saved file up to this size is copied into the journal at once (default 65536)",
    "staging_min_free": "bytes a filesystem must keep free for the agent to stage a snapshot on it (default 1 GiB)",
    "journal_fsync": "1: fsync the journal after every record (survives power loss, not only kill -9)",
    "job_timeout": "seconds before the worker gives up on one stuck job, plus 1 s per 20 MiB (default 600)",
    "catalog_timeout": "seconds for connecting to and each statement of a server catalog (default 30)",
    "log_level": "logging level of the clearml_hooks logger (default WARNING)",
}


# -- value parsers: each returns the typed value or raises ValueError ---------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError
    return seconds


def _seconds_within(low: float, high: float) -> Callable[[Any], float]:
    """Seconds in [low, high]: a timeout of 1e-300 s gives up on everything, one of 1e300 s
    overflows the drivers' own limits (PostgreSQL's is about 24 days)."""

    def parse(value: Any) -> float:
        seconds = _seconds(value)
        if not low <= seconds <= high:
            raise ValueError
        return seconds

    return parse


def _bytes_at_most(high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = _bytes(value)
        if number > high:
            raise ValueError
        return number

    return parse


DAY = 86400.0


def _wait(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    seconds = float(value)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError
    return seconds


def _bytes(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    number = float(value)
    if number < 0 or number != int(number):
        raise ValueError
    return int(number)


def _text(value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError
    return os.fspath(value).strip()


def _registered(group: str) -> str:
    from clearml_hooks import plugins

    return ", ".join(sorted(plugins.entry_points(group))) or "none installed"


def _catalog_url(value: Any) -> str:
    """A URL whose dialect (``sqlite``, ``postgresql+psycopg``) has a catalog registered."""
    from clearml_hooks import plugins

    url = _text(value)
    dialect = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if dialect not in plugins.entry_points("clearml_hooks.catalogs"):
        raise ValueError
    return url


def _blob_url(value: Any) -> str:
    """A folder, or a URL whose scheme has a blob store registered."""
    from clearml_hooks import plugins

    url = _text(value)
    if "://" in url and url.split("://", 1)[0] not in plugins.entry_points(
            "clearml_hooks.blob_stores"):
        raise ValueError
    return url


def _keys(value: Any) -> frozenset[str]:
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple, set, frozenset)) or not all(
            isinstance(p, str) for p in parts):
        raise ValueError
    return frozenset(p.strip().lower() for p in parts if p.strip())


def _level(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        level = value
    else:
        text = str(value).strip().upper()
        level = int(text) if text.isdigit() else logging.getLevelName(text)
    if not isinstance(level, int) or not logging.NOTSET <= level <= logging.CRITICAL:
        raise ValueError
    return level


class Spec(NamedTuple):
    parse: Callable[[Any], Any]
    default: Any
    expected: str | Callable[[], str]  # a callable: computed only for the error message


SPECS: dict[str, Spec] = {
    "home": Spec(_text, None, "a folder"),
    "catalog_url": Spec(_catalog_url, None, lambda: "a SQLAlchemy URL (sqlite:///path, "
                        "postgresql://user@host/db) of a dialect with a catalog: "
                        + _registered("clearml_hooks.catalogs")),
    "blob_url": Spec(_blob_url, None, lambda: "a folder or a URL (s3://bucket/prefix) of a "
                     "scheme with a blob store: " + _registered("clearml_hooks.blob_stores")),
    "exit_timeout": Spec(_wait, DEFAULT_EXIT_TIMEOUT, "a number of seconds (0 or more)"),
    "offline": Spec(_flag, False, "1/0 (true/false, yes/no, on/off)"),
    "disabled": Spec(_keys, frozenset(), "comma-separated framework keys, or *"),
    "strict": Spec(_flag, False, "1/0 (true/false, yes/no, on/off)"),
    "capture_all_ranks": Spec(_flag, False, "1/0 (true/false, yes/no, on/off)"),
    "capture_in_workers": Spec(_flag, False, "1/0 (true/false, yes/no, on/off)"),
    "s3_endpoint_url": Spec(_text, None, "a URL (http://host:port)"),
    "s3_connect_timeout": Spec(_seconds_within(0.1, DAY), 10.0,
                               "a number of seconds from 0.1 to 86400"),
    "s3_read_timeout": Spec(_seconds_within(0.1, DAY), 20.0,
                            "a number of seconds from 0.1 to 86400"),
    "inline_max": Spec(_bytes_at_most(16 << 20), 64 << 10,
                       "a whole number of bytes from 0 to 16 MiB (16777216)"),
    "staging_min_free": Spec(_bytes, 1 << 30, "a whole number of bytes (0 or more)"),
    "journal_fsync": Spec(_flag, False, "1/0 (true/false, yes/no, on/off)"),
    "job_timeout": Spec(_seconds_within(1.0, 30 * DAY), 600.0,
                        "a number of seconds from 1 to 2592000 (30 days)"),
    "catalog_timeout": Spec(_seconds_within(0.1, 24 * DAY), 30.0,
                            "a number of seconds from 0.1 to 2073600 (24 days)"),
    "log_level": Spec(_level, logging.WARNING,
                      "a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL, or 0 to 50)"),
}
assert set(SPECS) == set(SETTINGS_DOC)


# -- sources ----------------------------------------------------------------------------------

def config_file_path() -> str:
    explicit = os.environ.get("CLEARML_HOOKS_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "clearml-hooks", "config.toml")


_file_cache: tuple[tuple, dict[str, Any]] = ((), {})
_file_lock = threading.Lock()
_warned: set[tuple[str, tuple[str, ...]]] = set()
log = logging.getLogger("clearml_hooks")


def file_values() -> dict[str, Any]:
    """The config file's settings, re-read only when the file changes (one ``stat`` a call)."""
    global _file_cache
    path = config_file_path()
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.environ.get("CLEARML_HOOKS_CONFIG"):  # named on purpose: a typo must not pass
            _warn_once(path, f"clearml-hooks: config file {path} (CLEARML_HOOKS_CONFIG) cannot "
                             f"be read ({exc.strerror}); its settings are not applied")
        return {}
    if not stat.S_ISREG(st.st_mode):
        _warn_once(path, f"clearml-hooks: config file {path} is not a file; its settings are "
                         "not applied")
        return {}
    key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
    cached_key, values = _file_cache
    # a file changed within the filesystem's timestamp granularity may look unchanged: a
    # recent one is read again (git's "racy" check)
    if cached_key == key and time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        return values
    with _file_lock:
        try:
            import tomllib  # type: ignore[import-not-found]
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as exc:
            _warn_once(path, f"clearml-hooks: config file {path} cannot be read "
                             f"({exc.strerror}); its settings are not applied")
            return {}
        except Exception as exc:
            raise ValueError(f"clearml-hooks config file {path} is not valid TOML: {exc}") from exc
        unknown = tuple(sorted(set(values) - set(SPECS)))
        if unknown and (path, unknown) not in _warned:
            _warned.add((path, unknown))
            log.warning("clearml-hooks: config file %s: unknown setting(s) %s ignored; known: %s",
                        path, ", ".join(unknown), ", ".join(SPECS))
        _file_cache = (key, values)
        return values


def _warn_once(path: str, message: str) -> None:
    if (path, (message,)) not in _warned:
        _warned.add((path, (message,)))
        log.warning("%s", message)


def _unset(value: Any) -> bool:
    """An empty or blank value means "not set" wherever it comes from, as an empty
    environment variable does: the next source applies."""
    return value is None or (isinstance(value, str) and not value.strip())


_task_values: dict[str, Any] = {}


def set_task_values(values: Mapping[str, Any] | None) -> None:
    """The settings given to ``Task.init(settings=...)``: they win over everything else until
    the task closes (``None``). Raises ``ValueError`` for an unknown name or a bad value."""
    if values is not None and not isinstance(values, Mapping):
        raise ValueError("Task.init(settings=...) takes a dict of setting names to values, "
                         f"such as {{'exit_timeout': 30}}, not {type(values).__name__}")
    values = dict(values or {})
    unknown = sorted(map(repr, set(values) - set(SPECS)))
    if unknown:
        raise ValueError(f"Task.init(settings=...): unknown setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(SPECS)}")
    for name, value in values.items():
        if not _unset(value):
            _parse(name, value, "Task.init(settings=...)")
    _task_values.clear()
    _task_values.update(values)


def export_task_values() -> dict[str, str | None]:
    """Put the ``Task.init(settings=)`` values in ``os.environ`` too, so that the Python
    children that join the task (spawned ranks, workers) use them; returns what to restore."""
    saved: dict[str, str | None] = {}
    for name, value in _task_values.items():
        env = ENV_PREFIX + name.upper()
        saved[env] = os.environ.get(env)
        if isinstance(value, bool):
            os.environ[env] = "1" if value else "0"
        elif isinstance(value, (list, tuple, set, frozenset)):
            os.environ[env] = ",".join(map(str, value))
        else:
            os.environ[env] = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return saved


def unexport(saved: Mapping[str, str | None]) -> None:
    """Undo ``export_task_values`` when the task closes."""
    for env, old in saved.items():
        if old is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = old


def _parse(name: str, raw: Any, where: str) -> Any:
    spec = SPECS[name]
    try:
        return spec.parse(raw)
    except (TypeError, ValueError, OverflowError):
        expected = spec.expected() if callable(spec.expected) else spec.expected
        shown = _redact(raw) if name == "catalog_url" and isinstance(raw, str) else raw
        raise ValueError(f"clearml-hooks setting {name!r} = {shown!r} (from {where}) is not "
                         f"valid: expected {expected}") from None


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def source(name: str) -> tuple[Any, str] | None:
    """The raw value of a setting and where it comes from, or None when it is not set."""
    if name not in SPECS:
        raise KeyError(f"unknown clearml-hooks setting {name!r}; known: {', '.join(SPECS)}")
    if not _unset(_task_values.get(name)):
        return _task_values[name], "Task.init(settings=...)"
    env_name = ENV_PREFIX + name.upper()
    env = os.environ.get(env_name)
    if not _unset(env):
        return env, env_name
    values = file_values()
    if not _unset(values.get(name)):
        return values[name], f"{name} in {config_file_path()}"
    return None


def get(name: str) -> Any:
    """A setting's typed value: ``Task.init`` > environment > config file > default.
    A bad value raises ``ValueError`` naming the setting, where it came from and what is
    expected."""
    found = source(name)
    if found is None:
        return SPECS[name].default
    return _parse(name, *found)


def get_or_default(name: str) -> Any:
    """``get`` for the hooks' hot path, which must never raise into user code: a bad value
    was already reported by ``Task.init`` (``validate``), so the default applies here."""
    try:
        return get(name)
    except ValueError:
        return SPECS[name].default


def validate() -> None:
    """Read every setting now, so a bad one fails ``Task.init`` (not a hook, later)."""
    for name in SPECS:
        get(name)


# -- logging ----------------------------------------------------------------------------------

_handler: logging.Handler | None = None


def apply_log_level() -> None:
    """Set the ``clearml_hooks`` logger's level from ``log_level`` when it is set (else the
    application's own logging configuration stays as it is). Below WARNING, with no logging
    configured by the application, add a stderr handler so the lines are seen."""
    global _handler
    if source("log_level") is None:
        return
    level = get("log_level")
    logger = logging.getLogger("clearml_hooks")
    logger.setLevel(level)
    if level < logging.WARNING and _handler is None and not logger.handlers \
            and not logging.getLogger().handlers:
        _handler = logging.StreamHandler()
        _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(_handler)


# -- the store's snapshot -----------------------------------------------------------------------

class Settings:
    """Where the store lives and how capture behaves, resolved once per ``Task.init``."""

    def __init__(self, home: str, catalog_url: str, blob_url: str,
                 exit_timeout: float = DEFAULT_EXIT_TIMEOUT, offline: bool = False) -> None:
        self.home = home
        self.catalog_url = catalog_url
        self.blob_url = blob_url
        self.exit_timeout = exit_timeout
        self.offline = offline
        self.inline_max: int = get("inline_max")
        self.staging_min_free: int = get("staging_min_free")
        self.journal_fsync: bool = get("journal_fsync")
        self.job_timeout: float = get("job_timeout")
        self.catalog_timeout: float = get("catalog_timeout")

    def __repr__(self) -> str:
        return (f"Settings(home={self.home!r}, catalog_url={self.catalog_url!r}, "
                f"blob_url={self.blob_url!r}, offline={self.offline!r})")

    @classmethod
    def resolve(cls, output_uri: str | None = None, home: str | None = None) -> Settings:
        """``output_uri`` (``Task.init``): a folder is the store home; a remote URL is where
        bytes go. ``home`` (``--home``) wins over every other source."""
        apply_log_level()
        blob_url = None
        if isinstance(output_uri, bool):  # ClearML's output_uri=True: "the default storage"
            output_uri = None
        if output_uri:
            output_uri = os.fspath(output_uri)
            if "://" in output_uri and not output_uri.startswith("file://"):
                blob_url = output_uri
            else:
                home = home or output_uri.removeprefix("file://")
        home = home or get("home") or os.path.join(os.path.expanduser("~"), ".clearml-hooks")
        home = os.path.abspath(os.path.expanduser(str(home)))
        catalog_url = get("catalog_url") or "sqlite:///" + os.path.join(home, "catalog.db")
        blob_url = blob_url or get("blob_url") or os.path.join(home, "blobs")
        return cls(home=home, catalog_url=catalog_url, blob_url=blob_url,
                   exit_timeout=get("exit_timeout"), offline=get("offline"))
