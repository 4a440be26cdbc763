"""Catalog fields are data, never paths: checks that keep reads and writes inside their folder.

On a shared team catalog any training process can write rows, so a ``relpath`` of ``../../x``,
an absolute path or a ``digest`` of ``../x`` must never steer a file operation outside the cache
or staging folder it belongs to.
"""

from __future__ import annotations

import os
import re

_SHA256 = re.compile(r"[0-9a-f]{64}")
_DRIVE = re.compile(r"^[A-Za-z]:")
# a backslash or "C:" is a folder or drive only on Windows; on POSIX they are ordinary name
# characters (a model saved as "a\\b.pt" on Linux must be readable there)
_WINDOWS_PATHS = "\\" in (os.sep, os.altsep)


def catalog_text(value: str | None) -> str | None:
    """A path or name as the catalog can store it: a file name that is not valid UTF-8 (on
    POSIX, ``os.fsdecode`` keeps its bytes as lone surrogates, which no database takes) gets
    those bytes written as ``\\xff``; anything else is returned as it is."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _whose(model: str | None) -> str:
    return f"model {model}: " if model else ""


def is_sha256(value: object) -> bool:
    """True for exactly 64 lowercase hex characters (how every blob key is spelled)."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def check_sha256(value: object, *, model: str | None = None, what: str = "sha256") -> str:
    """``value`` if it is a sha256 hex digest, else a ValueError naming the model and value."""
    if not is_sha256(value):
        raise ValueError(f"{_whose(model)}{what} {value!r} in the catalog is not a sha256 "
                         "(64 lowercase hex characters); refusing to use it as a file name")
    return value  # type: ignore[return-value]


def safe_relpath(rel: object, *, model: str | None = None) -> str:
    """A catalog relpath as a clean relative POSIX path, or a ValueError naming the bad value.

    Rejected: non-strings, empty paths or components, absolute paths, NUL, ``.`` or ``..``
    components, and on Windows backslashes and drive letters.
    """
    reason = _relpath_problem(rel)
    if reason:
        raise ValueError(f"{_whose(model)}unsafe file path {rel!r} in the catalog ({reason}); "
                         "refusing to read or write it")
    return os.path.join(*str(rel).split("/"))


def _relpath_problem(rel: object) -> str | None:
    if not isinstance(rel, str) or not rel:
        return "empty or not a string"
    if "\x00" in rel:
        return "contains NUL"
    if _WINDOWS_PATHS and "\\" in rel:
        return "contains a backslash"
    if rel.startswith("/") or os.path.isabs(rel):
        return "absolute path"
    if _WINDOWS_PATHS and _DRIVE.match(rel):
        return "drive letter"
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            return f"component {part!r}"
    return None


def join_inside(root: str, rel: object, *, model: str | None = None) -> str:
    """``root``/``rel`` after checking ``rel`` and that the real path stays inside ``root``.

    The realpath check also catches a symlink planted inside ``root`` that points outside it.
    """
    path = os.path.join(root, safe_relpath(rel, model=model))
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise ValueError(f"{_whose(model)}file path {rel!r} resolves to {real}, outside "
                         f"{real_root}; refusing to read or write it")
    return path


def safe_target_filename(name: object) -> str:
    """A user-given target file name as one plain name (``update_weights(target_filename=)``)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise ValueError(f"target_filename {name!r} must be a string")
    if not name or name in (".", "..") or "/" in name or "\x00" in name or os.path.isabs(name) \
            or (_WINDOWS_PATHS and ("\\" in name or _DRIVE.match(name))):
        raise ValueError(f"target_filename {name!r} must be a plain file name: no folders, "
                         "no '..', not absolute")
    return name


def safe_name(name: object, fallback: str = "model") -> str:
    """A display-derived file name (a source path's or model's basename), or ``fallback``."""
    if isinstance(name, str):
        base = os.path.basename(name.rstrip("/"))
        if base and _relpath_problem(base) is None:
            return base
    return fallback
