"""Post-import hooks: run a callback when a module finishes importing, however it is imported.

A ``sys.meta_path`` finder (the technique of wrapt's ``register_post_import_hook``) wraps the
loader of watched modules, so ``import x``, ``importlib.import_module('x')`` and
``__import__`` are all seen. Unlike a one-shot hook, a watch stays armed: a module whose first
import fails part-way is seen again when it is imported successfully later.

We do not use wrapt's importer itself because importing wrapt costs ~60 ms, and ``Task.init``
must stay well under that; wrapt is imported only when a framework is actually patched.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("clearml_hooks")

ModuleCallback = Callable[[object], None]


class _ChainedLoader:
    """Delegates to the real loader, restores it on the module, then fires the callbacks."""

    def __init__(self, loader, finder: PostImportFinder) -> None:
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def _restore(self, module) -> None:
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader

    def exec_module(self, module) -> None:
        self._restore(module)
        self._loader.exec_module(module)
        self._finder.notify(module.__name__, sys.modules.get(module.__name__, module))

    def load_module(self, fullname):  # legacy loaders
        module = self._loader.load_module(fullname)
        self._restore(module)
        self._finder.notify(fullname, module)
        return module


class PostImportFinder:
    """The one finder we put at the front of ``sys.meta_path``."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[ModuleCallback]] = {}
        self._local = threading.local()
        self._lock = threading.RLock()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self._callbacks:
            return None
        busy = self._local.__dict__.setdefault("busy", set())
        if fullname in busy:
            return None
        busy.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            busy.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ChainedLoader(spec.loader, self)
        return spec

    def watch(self, name: str, callback: ModuleCallback) -> None:
        """Call ``callback(module)`` now if ``name`` is imported, and after every later import."""
        with self._lock:
            callbacks = self._callbacks.setdefault(name, [])
            if callback in callbacks:
                return
            callbacks.append(callback)
        module = sys.modules.get(name)
        if module is not None and not _initializing(module):
            _safe(callback, module, name)

    def unwatch(self, name: str, callback: ModuleCallback) -> None:
        with self._lock:
            callbacks = self._callbacks.get(name, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._callbacks.pop(name, None)

    def unwatch_all(self) -> None:
        with self._lock:
            self._callbacks.clear()

    def notify(self, name: str, module) -> None:
        for callback in list(self._callbacks.get(name, ())):
            _safe(callback, module, name)


def _initializing(module) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _safe(callback: ModuleCallback, module, name: str) -> None:
    try:
        callback(module)
    except Exception:  # a hook must never fail the user's import
        from clearml_hooks.hooks import contract

        contract.agent_error(f"post-import hook for {name}")


_finder: PostImportFinder | None = None
_finder_lock = threading.Lock()


def finder() -> PostImportFinder:
    """The process-wide finder, installed in ``sys.meta_path`` on first use."""
    global _finder
    with _finder_lock:
        if _finder is None:
            _finder = PostImportFinder()
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        return _finder
