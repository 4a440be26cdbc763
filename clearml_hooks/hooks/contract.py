"""The capture contract's safety net: agent errors are logged once, counted, never raised.

The ``strict`` setting (``CLEARML_HOOKS_STRICT=1``) re-raises them instead, so our own tests see
every failure.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter

from clearml_hooks import config

log = logging.getLogger("clearml_hooks")

errors: Counter[str] = Counter()
_lock = threading.Lock()


def strict() -> bool:
    return bool(config.get_or_default("strict"))


def agent_error(where: str) -> None:
    """Record the exception being handled. Call from an ``except`` block only."""
    exc = sys.exc_info()[1]
    key = f"{where}: {type(exc).__name__}"
    with _lock:
        errors[key] += 1
        first = errors[key] == 1
    if first:
        log.warning("clearml-hooks: %s failed (%s: %s); the training code is not affected",
                    where, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
    if strict():
        raise


def error_count() -> int:
    with _lock:
        return sum(errors.values())
