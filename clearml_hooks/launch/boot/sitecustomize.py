"""clearml-hooks' ``sitecustomize``: Python children of a captured process join its task.

``clearml-hooks run`` (or a ``Task.init``) puts this folder first on ``PYTHONPATH``. Python
imports it at startup, before the program; it then:

- does nothing more when no task is named in ``CLEARML_HOOKS_TASK_ID`` (a dict lookup);
- otherwise waits, at the cost of one set lookup per top-level import, until the program first
  imports a framework, and only then imports clearml_hooks and joins the task (so helper
  processes that import no framework, such as multiprocessing's resource tracker, pay nothing);
- runs the next ``sitecustomize`` on ``sys.path``, as if this one were not there.

Nothing here may raise into the program. Standard library only, and only modules the
interpreter has already loaded at this point.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

# top-level modules whose first import joins the task: the bindings' (``Registry.
# trigger_modules``), put in the environment by the process that named the task
_TRIGGERS = frozenset(filter(None, os.environ.get("CLEARML_HOOKS_TRIGGERS", "").split(",")))


def _join() -> None:
    try:
        from clearml_hooks.launch.attach import attach_from_env

        attach_from_env()
    except Exception as exc:  # never into the program; an interpreter without clearml_hooks
        if os.environ.get("CLEARML_HOOKS_STRICT") == "1":
            task = os.environ.get("CLEARML_HOOKS_TASK_ID")
            sys.stderr.write(f"clearml-hooks: could not join task {task}: "
                             f"{type(exc).__name__}: {exc}\n")


class _JoinOnFrameworkImport:
    """A ``sys.meta_path`` finder that fires once, on the first import of a framework."""

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or fullname not in _TRIGGERS:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:  # another thread fired it first
            return None
        _join()
        # the import in progress must now pass through the finders that joining installed
        # (the hooks' post-import finder), which the import system will not ask again
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


def _forkserver() -> bool:
    """Is this multiprocessing's fork server? Its forks are fresh workers, not copies."""
    return any("multiprocessing.forkserver import main" in arg
               for arg in getattr(sys, "orig_argv", ()))


def _install() -> None:
    if not os.environ.get("CLEARML_HOOKS_TASK_ID"):
        return
    if _forkserver():
        os.environ["CLEARML_HOOKS_FORKSERVER_PID"] = str(os.getpid())
    if not _TRIGGERS or any(name in sys.modules for name in _TRIGGERS):
        _join()  # no list (an older parent): join at once; a framework loaded: never miss it
    else:
        sys.meta_path.insert(0, _JoinOnFrameworkImport())


def _chain() -> None:
    """Run the ``sitecustomize`` this one hides (later on ``sys.path``), as ``site`` would."""
    try:
        from importlib.machinery import PathFinder

        rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
        spec = PathFinder.find_spec("sitecustomize", rest)
        if spec is None or spec.loader is None:
            return
        from importlib.util import module_from_spec

        module = module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # what site.py prints for a failing sitecustomize
        if sys.flags.verbose:
            sys.excepthook(*sys.exc_info())
        else:
            sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                             f"{type(exc).__name__}: {exc}\n")


try:
    _install()
except Exception:
    pass
_chain()
