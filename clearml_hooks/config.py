"""Settings: ``Task.init`` arguments > ``CLEARML_HOOKS_*`` environment > config file > defaults.

Every setting has one name; the environment variable is ``CLEARML_HOOKS_`` + the name in upper
case, the config file key is the name itself (TOML, ``~/.config/clearml-hooks/config.toml`` or
``$CLEARML_HOOKS_CONFIG``).
"""

from __future__ import annotations

import os
from typing import Any

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


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def config_file_path() -> str:
    explicit = os.environ.get("CLEARML_HOOKS_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "clearml-hooks", "config.toml")


def _read_config_file() -> dict[str, Any]:
    path = config_file_path()
    if not os.path.isfile(path):
        return {}
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except Exception as exc:
            raise ValueError(f"clearml-hooks config file {path} is not valid TOML: {exc}") from exc


def _int_setting(name: str, file_values: dict[str, Any], default: int) -> int:
    value = lookup(name, file_values, default)
    try:
        return int(float(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"setting {name} (CLEARML_HOOKS_{name.upper()}) must be a number, "
                         f"not {value!r}") from exc


def lookup(name: str, file_values: dict[str, Any] | None = None, default: Any = None) -> Any:
    env = os.environ.get("CLEARML_HOOKS_" + name.upper())
    if env not in (None, ""):
        return env
    if file_values and name in file_values:
        return file_values[name]
    return default


class Settings:
    """Where the store lives and how capture behaves, resolved once per Task.init."""

    def __init__(self, home: str, catalog_url: str, blob_url: str,
                 exit_timeout: float = DEFAULT_EXIT_TIMEOUT, offline: bool = False,
                 extra: dict[str, Any] | None = None) -> None:
        extra = extra or {}
        self.home = home
        self.catalog_url = catalog_url
        self.blob_url = blob_url
        self.exit_timeout = exit_timeout
        self.offline = offline
        self.extra = extra
        self.inline_max = _int_setting("inline_max", extra, 64 << 10)
        self.staging_min_free = _int_setting("staging_min_free", extra, 1 << 30)
        self.journal_fsync = _truthy(lookup("journal_fsync", extra, False))
        self.job_timeout = float(_int_setting("job_timeout", extra, 600))
        self.catalog_timeout = float(_int_setting("catalog_timeout", extra, 30))

    def __repr__(self) -> str:
        return (f"Settings(home={self.home!r}, catalog_url={self.catalog_url!r}, "
                f"blob_url={self.blob_url!r}, offline={self.offline!r})")

    @classmethod
    def resolve(cls, output_uri: str | None = None, home: str | None = None) -> Settings:
        """``output_uri``: a folder is the store home; a remote URL is where bytes go."""
        file_values = _read_config_file()
        blob_url = None
        if isinstance(output_uri, bool):  # ClearML's output_uri=True: "the default storage"
            output_uri = None
        if output_uri:
            output_uri = os.fspath(output_uri)
            if "://" in output_uri and not output_uri.startswith("file://"):
                blob_url = output_uri
            else:
                home = home or output_uri.removeprefix("file://")
        home = home or lookup("home", file_values) or os.path.join(
            os.path.expanduser("~"), ".clearml-hooks")
        home = os.path.abspath(os.path.expanduser(str(home)))
        catalog_url = lookup("catalog_url", file_values) or "sqlite:///" + os.path.join(home, "catalog.db")
        blob_url = blob_url or lookup("blob_url", file_values) or os.path.join(home, "blobs")
        try:
            exit_timeout = float(lookup("exit_timeout", file_values, DEFAULT_EXIT_TIMEOUT))
        except ValueError as exc:
            raise ValueError("CLEARML_HOOKS_EXIT_TIMEOUT must be a number of seconds") from exc
        return cls(home=home, catalog_url=str(catalog_url), blob_url=str(blob_url),
                   exit_timeout=exit_timeout,
                   offline=_truthy(lookup("offline", file_values, False)),
                   extra=file_values)
