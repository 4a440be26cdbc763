"""``auto_connect_frameworks``: which bindings are on and which wildcards filter them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

# A selection maps a key to None (capture everything), False (off) or a tuple of wildcards.
Selection = dict[str, "tuple[str, ...] | None | bool"]


def parse_auto_connect(value: Any, keys: Iterable[str] = ()) -> Selection:
    """Validate ``Task.init(auto_connect_frameworks=...)``; raise ``ValueError`` naming what is
    wrong. ``keys``: the valid framework keys (``registry().framework_keys()``, from the
    bindings' entry points)."""
    valid = tuple(dict.fromkeys(keys))
    if value is True or value is None:
        return {k: None for k in valid}
    if value is False:
        return {k: False for k in valid}
    if not isinstance(value, Mapping):
        raise ValueError(
            "auto_connect_frameworks must be True, False or a dict of framework key -> "
            f"bool / wildcard / list of wildcards, got {type(value).__name__}"
        )
    selection: Selection = {k: None for k in valid}
    for key, spec in value.items():
        if key not in valid:
            raise ValueError(
                f"auto_connect_frameworks: unknown framework key {key!r}; valid keys are: "
                + ", ".join(valid)
            )
        selection[key] = _parse_spec(key, spec)
    # keys the user gave explicitly, in order, so that "the first key present wins"
    selection["__given__"] = tuple(value.keys())  # type: ignore[assignment]
    return selection


def _parse_spec(key: str, spec: Any) -> tuple[str, ...] | None | bool:
    if spec is True:
        return None
    if spec is False:
        return False
    if isinstance(spec, (str, os.PathLike)):
        return (os.fspath(spec),)
    if isinstance(spec, (list, tuple, set, frozenset)) and all(
        isinstance(s, (str, os.PathLike)) for s in spec
    ):
        return tuple(os.fspath(s) for s in spec)
    raise ValueError(
        f"auto_connect_frameworks[{key!r}] must be a bool, a wildcard string or a list of "
        f"wildcard strings, got {spec!r}"
    )


def spec_for(selection: Selection, keys: tuple[str, ...]) -> tuple[str, ...] | None | bool:
    """The spec that applies to a binding whose filter keys are ``keys``.

    The first of ``keys`` that the user named explicitly wins (``keras`` before ``tensorflow``
    for Keras saves); if none was named, the first key's default.
    """
    given = selection.get("__given__", ())
    for key in keys:
        if key in given:  # type: ignore[operator]
            return selection[key]
    return selection.get(keys[0])


def disabled_by_env() -> set[str]:
    """The ``disabled`` setting (``CLEARML_HOOKS_DISABLED=pytorch,xgboost`` or ``*``, the config
    file, ``Task.init(settings=)``) switches bindings off. (``config`` is imported here, not
    at the top: ``clearml-hooks run`` validates its options with this module before the
    command starts, and the settings reader brings ``logging``.)"""
    from clearml_hooks import config

    return set(config.get_or_default("disabled"))
