"""How a run ended, for the task's status: an unhandled exception is "failed", Ctrl-C and
SIGTERM are "stopped" (as ClearML reports them), anything else "completed".

A SIGTERM handler is installed only where none is (the default action): it records the end,
closes the task within a short budget, then dies by SIGTERM as it would have, so exit statuses
and launchers see no difference.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from clearml_hooks import context

TERM_CLOSE_TIMEOUT = 10.0
_installed = False


def _mark(status: str) -> None:
    task = context.current_task()
    if task is not None:
        task.end_status = status


def install() -> None:
    """Watch for the ways this process can end (once per process; acts on the current task)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous_hook = sys.excepthook
    pid = os.getpid()

    def excepthook(exc_type, exc, tb):
        if os.getpid() == pid:
            _mark("stopped" if issubclass(exc_type, KeyboardInterrupt) else "failed")
        previous_hook(exc_type, exc, tb)

    sys.excepthook = excepthook
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the program (or its framework) handles SIGTERM itself
    except (AttributeError, ValueError):
        return

    def on_term(signum, _frame):
        task = context.current_task()
        try:
            if task is not None and os.getpid() == pid:  # not a forked worker's SIGTERM
                task.end_status = "stopped"
                task.close(timeout=min(TERM_CLOSE_TIMEOUT, task.settings.exit_timeout))
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):
        pass
