"""Who called a hooked function: the first frame that is neither the agent's nor wrapt's.

Shared by bindings that decide from their caller (a Keras ``ModelCheckpoint``, joblib's own
cache, CatBoost's internal saves), so that no binding imports another.
"""

from __future__ import annotations

import sys
from types import FrameType

from clearml_hooks.hooks.binding import Location

AGENT_MODULES = ("clearml_hooks.", "wrapt")


def caller_frame(depth: int = 1) -> FrameType | None:
    """The frame that called the hooked function: the first one outside the agent and wrapt."""
    frame: FrameType | None = sys._getframe(depth + 1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(AGENT_MODULES):
        frame = frame.f_back
    return frame


def caller_module(depth: int = 2) -> tuple[str, str]:
    """(module, function) of the first frame above the hook that is not the agent's own.

    ``depth`` starts the walk above the extractor's caller; agent and wrapt frames are skipped
    so the answer does not depend on whether wrapt's C extension is in use.
    """
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if not name.startswith(AGENT_MODULES):
            return name, frame.f_code.co_name
        frame = frame.f_back
    return "", ""


def with_iteration(location: Location, iteration: int) -> Location:
    """The same location, recorded at ``iteration``."""
    return Location(location.path, location.kind, location.files, iteration, location.framework)
