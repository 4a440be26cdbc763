"""This process's pid, without a system call.

Why: the capture path checks "am I a forked child?" in three places per save (the journal, the
worker, the capturer), and ``os.getpid()`` is a system call each time (glibc stopped caching
it), tens of microseconds in a training thread whose caches the save just emptied. The pid is
read once and refreshed by an at-fork hook, which runs for ``os.fork``, ``os.forkpty`` and
multiprocessing's fork and forkserver starts.
"""

from __future__ import annotations

import os

PID = os.getpid()


def _refresh() -> None:
    global PID
    PID = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh)
