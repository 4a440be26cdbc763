"""``clearml-hooks run -- CMD ...``: run any command with capture on, without editing it.

This process owns the task: it names the task in the environment (``launch.env``), which
the command and every Python process it starts inherit, so that they join it through the boot
``sitecustomize``; then it registers the task and, at the end, its status (``Task._attach``
with ``owner``). The command's stdin, stdout and stderr are this
process's own. Signals sent to this process are passed on to the command, and this process
ends the way the command ended: the same exit status, or killed by the same signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from clearml_hooks.launch import env

# passed on to the command; SIGINT and SIGQUIT only when they did not come from the terminal
# (a terminal sends them to the whole foreground process group, the command included)
FORWARDED = tuple(getattr(signal, name) for name in
                  ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
                  if hasattr(signal, name))
_FROM_TERMINAL = tuple(getattr(signal, name) for name in ("SIGINT", "SIGQUIT")
                       if hasattr(signal, name))
OPEN_DELAY = 1.0  # seconds into the run before this process opens the task (see _supervise)
STOPPED_BY = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                   if hasattr(signal, name))


class CommandNotStarted(OSError):
    """The command could not be started; ``status`` is the shell's (127 not found, 126)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ``python -m LAUNCHER ... train.py``: the task is named after the script, not the launcher
LAUNCHER_MODULES = frozenset({
    "torch.distributed.run", "torch.distributed.launch", "accelerate.commands.launch",
    "accelerate.commands.accelerate_cli", "deepspeed", "deepspeed.launcher.runner"})


def default_task_name(command: Sequence[str]) -> str:
    """``train`` for ``python train.py`` / ``torchrun ... train.py`` / ``accelerate launch ...
    train.py`` (also as ``python -m torch.distributed.run ... train.py``), ``pkg.mod`` for
    ``python -m pkg.mod``, else the program's name."""
    launcher = None
    for i, arg in enumerate(command):
        if arg == "-m" and i + 1 < len(command):
            if launcher is None and command[i + 1] in LAUNCHER_MODULES:
                launcher = command[i + 1]
                continue
            return command[i + 1]
        if arg.endswith(".py") and not arg.startswith("-"):
            return os.path.splitext(os.path.basename(arg))[0]
    if launcher is not None:
        return launcher
    return os.path.basename(command[0]) if command else "untitled"


def _terminal_sent(signum: int) -> bool:
    if signum not in _FROM_TERMINAL:
        return False
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return True
        except (OSError, AttributeError):  # no controlling terminal; no process groups
            continue
    return False


def end_status(returncode: int) -> str:
    """The task's status for the command's exit: completed, stopped (by a signal) or failed."""
    if returncode == 0:
        return "completed"
    if returncode < 0 and -returncode in STOPPED_BY:
        return "stopped"
    return "failed"


def _trigger_modules() -> tuple[str, ...]:
    """The modules whose first import makes a child join the task: the bindings' own, read
    from their entry points without the registry (about 10 ms instead of 30 before the
    command starts)."""
    from clearml_hooks import plugins
    from clearml_hooks.hooks.binding import ENTRY_POINT_GROUP, top_level_modules

    bindings = []
    for ref in plugins.entry_points(ENTRY_POINT_GROUP).values():
        try:
            bindings.append(plugins.load(ref))
        except Exception:  # the registry says why, in the command, when it joins
            continue
    return top_level_modules(bindings)


def check_options(auto_connect_frameworks: Any, output_uri: str | None) -> None:
    """Bad options fail before the command starts (``ValueError``), importing little."""
    from clearml_hooks.hooks.selection import parse_auto_connect

    try:
        parse_auto_connect(auto_connect_frameworks)
    except ValueError:
        from clearml_hooks.task import _selection

        _selection(auto_connect_frameworks)  # a third-party binding's key passes; else raises
    if output_uri and "://" in output_uri:
        from clearml_hooks.task import _check_output_uri

        _check_output_uri(output_uri)


def run_command(command: Sequence[str], *, project: str | None = None,
                task_name: str | None = None, frameworks: str | None = None,
                output_uri: str | None = None) -> int:
    """Run ``command`` as the task's root process; return its exit status (negative: the
    signal that killed it). ``ValueError`` for bad options, before anything starts.

    The command starts first, with the task's id in its environment; this process opens the
    task afterwards (``_supervise``), so ``run`` adds little more than one interpreter to the
    command's start.
    """
    if not command:
        raise ValueError("no command to run (usage: clearml-hooks run [OPTIONS] -- CMD ...)")
    auto_connect = env.frameworks_from_json(frameworks)
    check_options(auto_connect, output_uri)
    env.forget()  # a run is a task of its own, also when started from a captured process
    task_id = os.urandom(16).hex()
    project = project or "default"
    task_name = task_name or default_task_name(command)
    env.export(task_id, project, task_name, "training", auto_connect, output_uri,
               triggers=_trigger_modules(), always=True)
    tasks: list[Any] = []

    def open_task() -> None:
        from clearml_hooks.task import Task

        try:
            # this process loads no models: hooks off here (the filter is in the children's
            # environment), which also spares checking every framework's version
            tasks.append(Task._attach(task_id, project, task_name, "training", False,
                                      output_uri, owner=True))
        except Exception as exc:  # the command runs anyway; say why nothing is recorded
            print(f"clearml-hooks: could not open task {task_id}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)

    returncode = 127
    try:
        returncode = _supervise(list(command), started=open_task)
    finally:
        if tasks:
            _finish(tasks[0], returncode)
    return returncode


def _supervise(command: list[str], started: Any) -> int:
    """Start the command, pass signals on, wait. ``started()`` runs in a thread
    ``OPEN_DELAY`` seconds in (or once the command has ended, if sooner): not while the
    command's interpreter starts up, which it would slow down on a busy machine."""
    child: list[subprocess.Popen] = []
    early: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if not child:
            early.append(signum)
        elif not _terminal_sent(signum):
            try:
                child[0].send_signal(signum)
            except OSError:
                pass

    previous = {}
    for signum in FORWARDED:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored stays ignored (nohup)
            previous[signum] = signal.signal(signum, forward)
    ended = threading.Event()
    opener = threading.Thread(target=lambda: (ended.wait(OPEN_DELAY), started()),
                              name="clearml-hooks-run", daemon=True)
    try:
        try:
            child.append(subprocess.Popen(command))
        except FileNotFoundError as exc:  # no task is recorded for a command that never ran
            raise CommandNotStarted(f"command not found: {command[0]}", 127) from exc
        except PermissionError as exc:
            raise CommandNotStarted(f"cannot run {command[0]}: {exc.strerror}", 126) from exc
        opener.start()
        for signum in early:
            forward(signum, None)
        return child[0].wait()
    finally:
        ended.set()
        if opener.is_alive():
            opener.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _finish(task: Any, returncode: int) -> None:
    """Close the task, then record how the command ended if it did not succeed."""
    task.close()
    status = end_status(returncode)
    if status != "completed" and not task.inert:
        try:
            task.capturer.journal_status(status)
            if task.store.is_open:
                task.capturer.flush(10.0)
        except Exception as exc:
            print(f"clearml-hooks: could not mark task {task.id} {status}: {exc}",
                  file=sys.stderr)


def exit_like(returncode: int) -> int:
    """Die by the signal that killed the command (after the exit handlers), so whoever
    started us sees the same thing; else return the exit status to exit with."""
    if returncode >= 0:
        return returncode
    signum = -returncode
    sys.stdout.flush()
    sys.stderr.flush()
    import atexit

    try:
        atexit._run_exitfuncs()
    except Exception:
        pass
    try:  # SIGKILL (the OOM killer's) has no handler to reset: signal.signal refuses it
        signal.signal(signum, signal.SIG_DFL)
    except (OSError, ValueError):
        pass
    try:
        os.kill(os.getpid(), signum)
    except OSError:
        pass
    return 128 + signum  # a signal whose default action does not end the process
