"""A tiny in-repo "framework" for registry tests that need precise control (call counts, nesting,
failing imports). Real frameworks are tested with the real frameworks elsewhere."""

from __future__ import annotations

import os

CALLS: list[tuple] = []


def write(obj, path, *, marker=None):
    """Save ``obj`` (bytes) to ``path``; returns a token so tests can check the return value."""
    CALLS.append(("write", path, marker))
    if isinstance(obj, Exception):
        raise obj
    with open(path, "wb") as f:
        f.write(obj)
    return ("written", os.path.basename(os.fspath(path)))


def outer_write(obj, path):
    """A save that saves through another hooked save (Trainer.save_checkpoint -> torch.save)."""
    CALLS.append(("outer", path, None))
    return write(obj, path)


public_write = write
