"""Join the task named by the environment, from the boot ``sitecustomize``."""

from __future__ import annotations


def attach_from_env() -> None:
    """``Task._attach`` with the environment's task; errors are logged and counted."""
    try:
        from clearml_hooks.launch import env

        joined = env.joined_task()
        if joined is None:
            return
        from clearml_hooks.task import Task

        if Task.current_task() is None:  # else the script's own Task.init came first: its
            Task._attach(**joined)  # auto_connect_frameworks stays as it chose
    except Exception:
        from clearml_hooks.hooks import contract

        # logged once; re-raised only in strict mode, where the sitecustomize prints it
        contract.agent_error("joining the task named by CLEARML_HOOKS_TASK_ID")
