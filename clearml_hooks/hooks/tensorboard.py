"""TensorBoard steps become the task's iteration, as with ClearML's TensorBoard binding.

ClearML reports every ``SummaryWriter`` event at its ``global_step``, and a model saved
afterwards carries the task's last iteration. Here the one place every ``add_*`` call of
``torch.utils.tensorboard`` and ``tensorboardX`` ends in, ``FileWriter.add_event(event, step)``,
is patched (a post-import hook, wrapt) to raise the task's iteration to the step:

- the highest step logged so far wins, as a ``Logger.report_scalar`` iteration does (ClearML's
  last iteration is the maximum reported one); a step below the current iteration changes
  nothing, so ``task.set_last_iteration(n)`` holds until TensorBoard logs a step above ``n``;
- an epoch or step that the framework hands its checkpoint save (Keras, Lightning) is recorded
  with that snapshot whatever the task's iteration is.

The hook keeps the capture contract: the writer's call runs once with its arguments, its result
and exceptions pass through, our errors are logged once and never raised (strict mode aside).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from clearml_hooks import context
from clearml_hooks.hooks import contract
from clearml_hooks.hooks.importer import finder

log = logging.getLogger("clearml_hooks")

KEY = "tensorboard"  # auto_connect_frameworks={"tensorboard": False} switches it off (ClearML)
WRITER_MODULES = ("torch.utils.tensorboard.writer", "tensorboardX.writer")

_lock = threading.RLock()
_patches: dict[str, tuple[Any, Any, Any]] = {}  # module -> (FileWriter, original, wrapper)


def wanted(auto_connect_frameworks: Any) -> bool:
    """Whether ``Task.init(auto_connect_frameworks=...)`` leaves TensorBoard on (it is on
    unless ``False`` or ``{"tensorboard": False}``), ``CLEARML_HOOKS_DISABLED`` aside."""
    from clearml_hooks.hooks.selection import disabled_by_env

    off = disabled_by_env()
    if KEY in off or "*" in off or auto_connect_frameworks is False:
        return False
    if isinstance(auto_connect_frameworks, Mapping):
        return auto_connect_frameworks.get(KEY, True) is not False
    return True


def install() -> None:
    """Patch the writers now if imported, else when they are. Idempotent."""
    with _lock:
        for name in WRITER_MODULES:
            finder().watch(name, _CALLBACKS[name])


def uninstall() -> None:
    """Stop watching imports and restore ``FileWriter.add_event`` exactly. Idempotent."""
    with _lock:
        f = finder()
        for name in WRITER_MODULES:
            f.unwatch(name, _CALLBACKS[name])
        for owner, original, wrapper in _patches.values():
            if owner.__dict__.get("add_event") is wrapper:
                owner.add_event = original
        _patches.clear()


def installed() -> list[str]:
    """The writer modules patched now."""
    with _lock:
        return sorted(_patches)


def _patch(name: str, module: Any) -> None:
    owner = getattr(module, "FileWriter", None)
    current = getattr(owner, "__dict__", {}).get("add_event")
    if current is None:
        log.debug("clearml-hooks: %s.FileWriter.add_event not found; steps not followed", name)
        return
    with _lock:
        patched = _patches.get(name)
        if patched is not None and patched[0] is owner and current is patched[2]:
            return
        import wrapt  # only once a writer is imported: importing wrapt costs ~60 ms

        wrapper = wrapt.FunctionWrapper(current, _on_add_event)
        owner.add_event = wrapper
        _patches[name] = (owner, current, wrapper)


class _Callback:
    """Post-import callback for one writer module (an object, so it can be unwatched)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: Any) -> None:
        _patch(self.name, module)


_CALLBACKS = {name: _Callback(name) for name in WRITER_MODULES}


def _on_add_event(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    try:
        _follow(instance, args, kwargs)
    except Exception:
        contract.agent_error("TensorBoard FileWriter.add_event (after the call)")
    return result


def _follow(writer: Any, args: tuple, kwargs: dict) -> None:
    task = context.current_task()
    if task is None:
        return
    step = args[1] if len(args) > 1 else kwargs.get("step")
    if step is None:  # tensorboardX: ``with writer.use_metadata(global_step=n)``
        metadata = getattr(writer, "_default_metadata", None)
        step = metadata.get("global_step") if isinstance(metadata, dict) else None
    if step is None:
        return
    step = int(step)
    if step >= task.get_last_iteration():
        task.set_last_iteration(step)
