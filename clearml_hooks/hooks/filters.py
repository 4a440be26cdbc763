"""Per-framework wildcard filters, compiled once so that a filtered-out call costs microseconds.

A pattern without ``/`` matches the file's base name (``final*.pt``); a pattern with ``/``
matches the end of the absolute path (``checkpoints/*.pt`` matches ``/x/checkpoints/a.pt``).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable

PathFilter = Callable[[str], bool]
_SEP = os.sep


def _always(path: str) -> bool:
    return True


def compile_filter(patterns: Iterable[str] | None) -> PathFilter:
    """One matcher for a list of wildcards; ``None`` (no filter) matches everything."""
    if patterns is None:
        return _always
    names, tails = [], []
    for p in patterns:
        p = p.replace(os.sep, "/")
        (tails if "/" in p else names).append(p)
    name_re = re.compile("|".join(fnmatch.translate(p) for p in names)).match if names else None
    tail_re = (
        re.compile("|".join(f"(?:.*/)?{fnmatch.translate(p.lstrip('/') if not p.startswith('/') else p)}"
                            for p in tails)).match
        if tails
        else None
    )
    if name_re and not tail_re:
        def match(path: str) -> bool:
            return name_re(path[path.rfind(_SEP) + 1:]) is not None
    elif tail_re and not name_re:
        def match(path: str) -> bool:
            return tail_re(os.path.abspath(path).replace(os.sep, "/")) is not None
    else:
        def match(path: str) -> bool:
            if name_re is not None and name_re(os.path.basename(path)) is not None:
                return True
            return tail_re is not None and tail_re(os.path.abspath(path).replace(os.sep, "/")) is not None
    match.patterns = tuple(patterns)  # type: ignore[attr-defined]
    return match
