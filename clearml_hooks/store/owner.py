"""Who owns a journal: host, pid and the process's start time (a reused pid is told apart)."""

from __future__ import annotations

import os
import time

HOST = os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")


def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot) from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def current_owner() -> str:
    """A file-name-safe id of this process: ``<host>-<pid>-<start>``."""
    started = start_time(os.getpid()) or str(int(time.time()))
    host = "".join(c if c.isalnum() or c in "._" else "_" for c in HOST) or "host"
    return f"{host}-{os.getpid()}-{started}"
