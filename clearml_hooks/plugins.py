"""Entry points: how bindings, blob stores and catalogs are found (pyproject.toml declares ours,
a third party declares theirs in the same groups).

``Task.init`` needs the binding group, and ``importlib.metadata`` costs ~40 ms to import and scan,
most of the ``Task.init`` budget. So the groups are read here straight from the
``entry_points.txt`` of each installed distribution on ``sys.path`` (the same files that
``importlib.metadata`` reads); only when that finds nothing (a zipped or unusual install) does
``importlib.metadata`` answer instead.
"""

from __future__ import annotations

import os
import sys
import threading

GROUPS = ("clearml_hooks.bindings", "clearml_hooks.blob_stores", "clearml_hooks.catalogs")

_cache: dict[str, dict[str, str]] | None = None
_cache_path: tuple[str, ...] = ()
_lock = threading.Lock()


def entry_points(group: str) -> dict[str, str]:
    """``{name: "module:attribute"}`` of one group; the first distribution on ``sys.path``
    that names an entry point wins, as with ``importlib.metadata``."""
    global _cache, _cache_path
    with _lock:
        if _cache is None or _cache_path != tuple(sys.path):
            _cache_path = tuple(sys.path)
            _cache = _scan(_cache_path)
        found = dict(_cache.get(group, {}))
    if not found:
        from importlib.metadata import entry_points as metadata_entry_points

        for ep in metadata_entry_points(group=group):
            found.setdefault(ep.name, ep.value)
    return found


def load(ref: str) -> object:
    """The object an entry point names (``"package.module:attribute"``)."""
    import importlib

    module_name, _, attribute = ref.partition(":")
    obj: object = importlib.import_module(module_name.strip())
    for part in filter(None, attribute.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def _scan(path: tuple[str, ...]) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    for base in path:
        try:
            names = sorted(os.listdir(base or "."))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            dist = name.rsplit(".", 1)[0].split("-", 1)[0].lower().replace("-", "_")
            if dist in seen:
                continue  # an older copy further down sys.path (importlib.metadata skips it)
            seen.add(dist)
            try:
                with open(os.path.join(base or ".", name, "entry_points.txt"),
                          encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            if "clearml_hooks." in text:
                _parse(text, groups)
    return groups


def _parse(text: str, groups: dict[str, dict[str, str]]) -> None:
    """The INI sections of ``entry_points.txt`` that are ours."""
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            current = groups.setdefault(section, {}) if section in GROUPS else None
        elif current is not None and "=" in line:
            name, _, value = line.partition("=")
            current.setdefault(name.strip(), value.split("[", 1)[0].strip())
