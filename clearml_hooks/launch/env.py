"""The environment variables that carry a task to child processes: write, read, forget.

Kept free of imports from the rest of the package: ``task.py`` reads it, and the boot
``sitecustomize`` reads the same names without importing anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

TASK_ID = "CLEARML_HOOKS_TASK_ID"
TASK_PID = "CLEARML_HOOKS_TASK_PID"  # the process that registered the task: it never joins it
PROJECT = "CLEARML_HOOKS_PROJECT"
TASK_NAME = "CLEARML_HOOKS_TASK_NAME"
TASK_TYPE = "CLEARML_HOOKS_TASK_TYPE"
FRAMEWORKS = "CLEARML_HOOKS_FRAMEWORKS"  # JSON of auto_connect_frameworks
OUTPUT_URI = "CLEARML_HOOKS_OUTPUT_URI"
TASK_STARTED = "CLEARML_HOOKS_TASK_STARTED"  # when the task began, so every process that
# journals the task record journals the same one
TRIGGERS = "CLEARML_HOOKS_TRIGGERS"  # comma-separated top-level modules of the bindings: a
# child joins the task on its first import of one
PROPAGATE = "CLEARML_HOOKS_PROPAGATE"  # 0: Task.init does not name its task to children

NAMES = (TASK_ID, TASK_PID, PROJECT, TASK_NAME, TASK_TYPE, FRAMEWORKS, OUTPUT_URI, TASK_STARTED,
         TRIGGERS)

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")

# what export() replaced, so that unexport() restores it: {task id: {name: old value or None}}
_saved: dict[str, dict[str, str | None]] = {}


def frameworks_from_json(raw: str | None) -> Any:
    """``--frameworks`` / ``CLEARML_HOOKS_FRAMEWORKS``: JSON ``true``, ``false`` or an object."""
    if raw is None or not raw.strip():
        return True
    import json

    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"frameworks must be JSON (true, false or an object), got {raw!r}: "
                         f"{exc}") from exc
    if not isinstance(value, (bool, dict)):
        raise ValueError(f"frameworks must be JSON true, false or an object, got {raw!r}")
    return value


def joined_task(auto_connect_frameworks: Any = True) -> dict[str, Any] | None:
    """The task this process joins (keyword arguments of ``Task._attach``), or None.

    None when no task is named, or when this process is the one that registered it (its own
    later ``Task.init`` calls behave as usual). ``auto_connect_frameworks`` other than the
    default ``True`` is the script's own choice and wins over the environment's.
    """
    task_id = os.environ.get(TASK_ID, "").strip()
    if not task_id or os.environ.get(TASK_PID, "").strip() == str(os.getpid()):
        return None
    if auto_connect_frameworks is True:
        auto_connect_frameworks = frameworks_from_json(os.environ.get(FRAMEWORKS))
    return {
        "task_id": task_id,
        "project": os.environ.get(PROJECT) or "default",
        "name": os.environ.get(TASK_NAME) or "untitled",
        "task_type": os.environ.get(TASK_TYPE) or "training",
        "auto_connect_frameworks": auto_connect_frameworks,
        "output_uri": os.environ.get(OUTPUT_URI) or None,
    }


def _jsonable(value: Any) -> Any:
    """Wildcards as ``auto_connect_frameworks`` accepts them: paths, sets of patterns."""
    return os.fspath(value) if isinstance(value, os.PathLike) else sorted(map(os.fspath, value))


def started() -> float:
    """When the joined task began (its record's timestamp); now if no process said."""
    try:
        return float(os.environ[TASK_STARTED])
    except (KeyError, ValueError):
        return time.time()


def _output_uri(output_uri: Any) -> str | None:
    if output_uri in (None, True, False):
        return None
    uri = os.fspath(output_uri)
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))  # children may chdir


def export(task_id: str, project: str, name: str, task_type: str,
           auto_connect_frameworks: Any = True, output_uri: Any = None, *,
           triggers: Sequence[str] = (), always: bool = False) -> None:
    """Name this process's task in ``os.environ``, so every Python child started from now on
    (inheriting the environment) joins it. ``CLEARML_HOOKS_PROPAGATE=0`` turns this off for
    ``Task.init`` (not for ``clearml-hooks run``: ``always``)."""
    off = os.environ.get(PROPAGATE, "").strip().lower() in ("0", "false", "no", "off")
    if off and not always:
        return
    values: dict[str, str | None] = {
        TASK_ID: task_id, TASK_PID: str(os.getpid()), TASK_STARTED: repr(time.time()),
        PROJECT: project, TASK_NAME: name,
        TASK_TYPE: task_type, OUTPUT_URI: _output_uri(output_uri), FRAMEWORKS: None,
        TRIGGERS: ",".join(triggers) or None,
    }
    if auto_connect_frameworks is not True:
        import json  # (not on run's way to starting the command in the common case)

        values[FRAMEWORKS] = json.dumps(auto_connect_frameworks, default=_jsonable)
    path = os.environ.get("PYTHONPATH", "")
    if BOOT_DIR not in path.split(os.pathsep):
        values["PYTHONPATH"] = os.pathsep.join(filter(None, (BOOT_DIR, path)))
    saved = _saved.setdefault(task_id, {})
    for key, value in values.items():
        saved.setdefault(key, os.environ.get(key))
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def unexport(task_id: str) -> None:
    """Undo ``export`` once the task is closed: later children start on their own again."""
    for key, old in _saved.pop(task_id, {}).items():
        if key == "PYTHONPATH":  # keep what the program itself added meanwhile
            parts = [p for p in os.environ.get(key, "").split(os.pathsep) if p and p != BOOT_DIR]
            old = os.pathsep.join(parts) or None
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def forget() -> None:
    """Drop a task named by the environment we inherited (``clearml-hooks run`` starts its own)."""
    for key in NAMES:
        os.environ.pop(key, None)
