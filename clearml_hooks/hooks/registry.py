"""The hook registry: finds bindings, patches frameworks lazily, restores them exactly.

Modeled on OpenTelemetry's ``BaseInstrumentor`` (idempotent ``instrument``/``uninstrument``,
version gates from package metadata) and MLflow's ``safe_patch`` (the user's call always runs
exactly once; agent failures never reach user code).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from typing import Any, Protocol

from clearml_hooks.hooks import contract, process
from clearml_hooks.hooks.binding import (
    ENTRY_POINT_GROUP,
    Binding,
    Call,
    Location,
    Target,
    top_level_modules,
)
from clearml_hooks.hooks.filters import PathFilter, compile_filter
from clearml_hooks.hooks.importer import finder
from clearml_hooks.hooks.selection import Selection, disabled_by_env, spec_for

log = logging.getLogger("clearml_hooks")



class CaptureSink(Protocol):
    """What the hooks hand their findings to (the capture pipeline)."""

    def before_save(self, path: str) -> None: ...

    def saved(self, hook: Hook, location: Location, framework: str, *,
              through_handle: bool = False) -> None: ...

    def loaded(self, hook: Hook, location: Location, framework: str) -> None: ...

    def skipped(self, reason: str) -> None: ...


_tls = threading.local()
_PLAIN_FILES = (io.FileIO, io.BufferedWriter, io.BufferedRandom)


class Hook:
    """The wrapper function (wrapt signature) for one target. The hot path lives here."""

    __slots__ = ("binding", "target", "registry", "filter", "original", "wrapper", "filtered")

    def __init__(self, binding: type[Binding], target: Target, registry: Registry) -> None:
        self.binding = binding
        self.target = target
        self.registry = registry
        self.filter: PathFilter = compile_filter(None)
        self.original: Any = None
        self.wrapper: Any = None
        self.filtered = 0

    def __call__(self, wrapped, instance, args, kwargs):
        sink = self.registry.sink
        if sink is None or getattr(_tls, "depth", 0):
            return wrapped(*args, **kwargs)
        _tls.depth = 1
        try:
            try:
                pending = self._before(sink, instance, args, kwargs)
            except Exception:
                contract.agent_error(f"{self.target.spelling} (before the call)")
                pending = None
            result = wrapped(*args, **kwargs)
            if pending is not None:
                try:
                    self._after(sink, pending, result)
                except Exception:
                    contract.agent_error(f"{self.target.spelling} (after the call)")
            return result
        finally:
            _tls.depth = 0

    def _before(self, sink: CaptureSink, instance, args, kwargs):
        call = Call(args, kwargs, instance)
        raw = self.target.path(call)
        if raw is None:
            return None
        fileobj = None
        if isinstance(raw, str):
            path = raw
        elif isinstance(raw, os.PathLike):
            path = os.fsdecode(os.fspath(raw))
        elif isinstance(raw, bytes):
            path = os.fsdecode(raw)
        else:
            name = getattr(raw, "name", None)
            if isinstance(name, bytes):
                name = os.fsdecode(name)
            if not isinstance(name, str) or not name or name.startswith("<"):
                sink.skipped("stream")
                return None
            if self.target.side == "save" and not isinstance(getattr(raw, "file", raw),
                                                             _PLAIN_FILES):
                # a compressing or encoding wrapper (gzip.open, ...) with a name: its last bytes
                # reach the disk only when the user closes it, so a copy now would be truncated
                sink.skipped("stream")
                return None
            path, fileobj = name, raw
        if self.target.side == "save" and getattr(sink, "protecting", True):
            sink.before_save(path)  # even when filtered out: it may overwrite a staged file
        if not self.filter(path):
            self.filtered += 1
            return None
        if not process.capture_allowed():
            return None
        return call, path, fileobj

    def _after(self, sink: CaptureSink, pending, result) -> None:
        call, path, fileobj = pending
        if fileobj is not None:
            flush = getattr(fileobj, "flush", None)
            if flush is not None and not getattr(fileobj, "closed", False):
                flush()
        call.result = result
        location = self.target.locate(call, path) if self.target.locate else Location(path)
        if location is None:
            sink.skipped("nothing written")
            return
        framework = location.framework
        if framework is None:
            fw = self.target.framework
            framework = fw(call) if callable(fw) else fw
        framework = framework or self.binding.framework
        if self.target.side == "save":
            # a save through a file object the user opened: the next one truncates the file
            # before any hook runs, so the sink must not share the inode (see store.staging)
            sink.saved(self, location, framework, through_handle=fileobj is not None)
        else:
            sink.loaded(self, location, framework)


_wrapper_class = None


def wrapper_class():
    """``wrapt.FunctionWrapper`` that also pickles and copies like the function it wraps.

    wrapt's proxies refuse ``pickle``/``copy``; a function is pickled by reference, so the
    wrapper reduces to its qualified name, which resolves back to this very wrapper.
    """
    global _wrapper_class
    if _wrapper_class is None:
        import wrapt

        class CaptureWrapper(wrapt.FunctionWrapper):
            def __reduce_ex__(self, protocol):
                return self.__qualname__

            def __reduce__(self):
                return self.__qualname__

            def __copy__(self):
                return self

            def __deepcopy__(self, memo):
                return self

        _wrapper_class = CaptureWrapper
    return _wrapper_class


class Patch:
    """One attribute we replaced, and what to put back."""

    __slots__ = ("owner", "attribute", "original", "wrapper")

    def __init__(self, owner: Any, attribute: str, original: Any, wrapper: Any) -> None:
        self.owner, self.attribute, self.original, self.wrapper = owner, attribute, original, wrapper


def _resolve(module: Any, qualname: str) -> tuple[Any, str]:
    owner = module
    *parents, attribute = qualname.split(".")
    for name in parents:
        owner = getattr(owner, name)
    return owner, attribute


def _own_attribute(owner: Any, attribute: str) -> Any:
    if isinstance(owner, type):
        return owner.__dict__.get(attribute)
    return getattr(owner, attribute, None)


def _loaded(name: str):
    module = sys.modules.get(name)
    if module is None:
        return None
    spec = getattr(module, "__spec__", None)
    if getattr(spec, "_initializing", False):
        return None
    return module


class Registry:
    """All bindings, their hooks and the patches in place. One per process (``registry()``)."""

    def __init__(self) -> None:
        self.sink: CaptureSink | None = None
        self.bindings: dict[str, type[Binding]] = {}
        self.hooks: dict[str, list[Hook]] = {}
        self.patches: list[Patch] = []
        self.selection: Selection | None = None
        self.unsupported: dict[str, str] = {}
        self._gate: dict[str, bool] = {}
        self._callbacks: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._discovered = False
        self._fresh: dict[str, Any] = {}

    # -- discovery ----------------------------------------------------------------------------

    def discover_entry_points(self) -> list[str]:
        """Bindings from the ``clearml_hooks.bindings`` entry-point group: ours (pyproject.toml)
        and third parties', the one list of frameworks. Returns the keys added."""
        from clearml_hooks import plugins

        added = []
        for name, ref in plugins.entry_points(ENTRY_POINT_GROUP).items():
            if name in self.bindings:
                continue
            try:
                binding = plugins.load(ref)
                self.add_binding(binding)  # type: ignore[arg-type]
                added.append(binding.key)  # type: ignore[attr-defined]
            except ImportError as exc:
                log.debug("clearml-hooks: binding %s (%s) is not available: %s", name, ref, exc)
            except Exception:
                contract.agent_error(f"loading binding {name!r} from entry point {ref}")
        if not self.bindings and not self._discovered:
            log.warning("clearml-hooks: no framework bindings found (entry-point group %s): "
                        "is clearml-hooks installed (pip install clearml-hooks, or pip install "
                        "-e . in a source checkout)? Nothing will be captured", ENTRY_POINT_GROUP)
        self._discovered = True
        return added

    load_builtin = discover_entry_points

    def framework_keys(self) -> tuple[str, ...]:
        """Every ``auto_connect_frameworks`` key: the bindings' keys, then the other keys
        that filter them (``scikit`` for joblib)."""
        with self._lock:
            keys = list(self.bindings)
            for binding in list(self.bindings.values()):
                keys.extend(binding.filter_keys)
                keys.extend(k for t in binding.targets for k in (t.filter_keys or ()))
        return tuple(dict.fromkeys(keys))

    def trigger_modules(self) -> tuple[str, ...]:
        """Top-level modules of every binding's targets: a child process joins its parent's
        task on the first import of one (the boot ``sitecustomize`` reads them from the
        environment, so the list is the bindings', kept nowhere else)."""
        with self._lock:
            return top_level_modules(list(self.bindings.values()))

    def add_binding(self, binding: type[Binding]) -> None:
        with self._lock:
            if not (isinstance(binding, type) and issubclass(binding, Binding)):
                raise TypeError(f"{binding!r} is not a clearml_hooks Binding subclass")
            self.bindings[binding.key] = binding
            self.hooks[binding.key] = [Hook(binding, t, self) for t in binding.targets]
            if self.selection is not None:
                self._instrument_binding(binding.key)

    # -- instrument / uninstrument ------------------------------------------------------------

    def instrument(self, selection: Selection, sink: CaptureSink) -> None:
        """Patch every selected binding now or when its framework is imported. Idempotent."""
        with self._lock:
            self.selection = selection
            self.sink = sink
            for key in list(self.bindings):
                self._instrument_binding(key)

    def _instrument_binding(self, key: str) -> None:
        binding = self.bindings[key]
        hooks = self.hooks[key]
        wanted = []
        for hook in hooks:
            spec = self._spec(binding, hook)
            if spec is False:
                continue
            hook.filter = compile_filter(spec if isinstance(spec, tuple) else None)
            wanted.append(hook)
        unwanted = [h for h in hooks if h not in wanted]
        self._unpatch(unwanted)
        for hook in wanted:
            for name in {hook.target.module, *(a.split(":", 1)[0] for a in hook.target.aliases)}:
                callback = self._callbacks.get(name)
                if callback is None:
                    callback = self._callbacks[name] = _ModuleCallback(self, name)
                finder().watch(name, callback)
            self._apply(hook)

    def uninstrument(self) -> None:
        """Restore every patched function exactly; stop watching imports. Idempotent."""
        with self._lock:
            self.sink = None
            self.selection = None
            f = finder()
            for name, callback in self._callbacks.items():
                f.unwatch(name, callback)
            self._callbacks.clear()
            for patch in reversed(self.patches):
                if _own_attribute(patch.owner, patch.attribute) is patch.wrapper:
                    setattr(patch.owner, patch.attribute, patch.original)
            self.patches.clear()
            for hooks in self.hooks.values():
                for hook in hooks:
                    hook.original = hook.wrapper = None

    def _unpatch(self, hooks: list[Hook]) -> None:
        if not hooks:
            return
        wrappers = {id(h.wrapper) for h in hooks if h.wrapper is not None}
        keep = []
        for patch in reversed(self.patches):
            if id(patch.wrapper) in wrappers:
                if _own_attribute(patch.owner, patch.attribute) is patch.wrapper:
                    setattr(patch.owner, patch.attribute, patch.original)
            else:
                keep.append(patch)
        self.patches = list(reversed(keep))
        for hook in hooks:
            hook.original = hook.wrapper = None

    def on_module(self, name: str, module: Any = None) -> None:
        """A watched module finished executing (still flagged as initializing by importlib)."""
        with self._lock:
            if self.selection is None:
                return
            if module is not None:
                self._fresh[name] = module
            for key, hooks in self.hooks.items():
                for hook in hooks:
                    t = hook.target
                    if name == t.module or any(a.split(":", 1)[0] == name for a in t.aliases):
                        if self._spec(self.bindings[key], hook) is not False:
                            self._apply(hook)
            self._fresh.pop(name, None)

    def _spec(self, binding: type[Binding], hook: Hook) -> tuple[str, ...] | None | bool:
        """The user's spec for a hook: False when switched off (by the selection or by
        ``CLEARML_HOOKS_DISABLED``), else None (everything) or its wildcards."""
        keys = binding.keys_for_filter(hook.target)
        off = disabled_by_env()
        if "*" in off or any(k in off for k in keys):
            return False
        return spec_for(self.selection or {}, keys)

    def _module(self, name: str) -> Any:
        return self._fresh.get(name) or _loaded(name)

    def _supported(self, binding: type[Binding]) -> bool:
        key = binding.key
        if key not in self._gate:
            self._gate[key] = _version_ok(binding, self.unsupported)
        return self._gate[key]

    def _apply(self, hook: Hook) -> None:
        t = hook.target
        module = self._module(t.module)
        if module is None or not self._supported(hook.binding):
            return
        try:
            owner, attribute = _resolve(module, t.qualname)
        except AttributeError:
            log.debug("clearml-hooks: %s not found; this version has no such target", t.spelling)
            return
        current = _own_attribute(owner, attribute)
        if current is None:
            log.debug("clearml-hooks: %s is not defined there; skipped", t.spelling)
            return
        if current is not hook.wrapper:
            if isinstance(current, wrapper_class()):
                return  # patched by another registry instance; leave it alone
            wrapper = wrapper_class()(current, hook)
            setattr(owner, attribute, wrapper)
            self.patches.append(Patch(owner, attribute, current, wrapper))
            hook.original, hook.wrapper = current, wrapper
        for alias in t.aliases:
            alias_module_name, alias_qualname = alias.split(":", 1)
            alias_module = self._module(alias_module_name)
            if alias_module is None:
                continue
            try:
                alias_owner, alias_attribute = _resolve(alias_module, alias_qualname)
            except AttributeError:
                continue
            current = _own_attribute(alias_owner, alias_attribute)
            if current is hook.original:
                setattr(alias_owner, alias_attribute, hook.wrapper)
            elif current is not hook.wrapper or any(
                p.owner is alias_owner and p.attribute == alias_attribute for p in self.patches
            ):
                continue
            # the alias was bound to our wrapper by the framework's own import
            # (``from torch.serialization import save``): restore it on uninstrument too
            self.patches.append(Patch(alias_owner, alias_attribute, hook.original, hook.wrapper))
        self._rebind_in_main(hook)

    def _rebind_in_main(self, hook: Hook) -> None:
        """``from joblib import dump`` in the user's script *before* ``Task.init`` bound the
        original function; rebind such names in ``__main__`` (ClearML misses these saves)."""
        main = sys.modules.get("__main__")
        if main is None or hook.original is None or not callable(hook.original):
            return
        names = [name for name, value in list(vars(main).items()) if value is hook.original]
        for name in names:
            setattr(main, name, hook.wrapper)
            self.patches.append(Patch(main, name, hook.original, hook.wrapper))


class _ModuleCallback:
    """Post-import callback for one module name (an object, so it can be unwatched)."""

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name

    def __call__(self, module) -> None:
        self.registry.on_module(self.name, module)


def _version_ok(binding: type[Binding], unsupported: dict[str, str]) -> bool:
    """Check the installed version against ``binding.requirement`` from package metadata."""
    if not binding.requirement:
        return True
    try:
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement

        requirement = Requirement(binding.requirement)
        dists = binding.distribution
        for dist in (dists,) if isinstance(dists, str) else dists:
            try:
                installed = version(dist)
            except PackageNotFoundError:
                continue
            if requirement.specifier.contains(installed, prereleases=True):
                return True
            unsupported[binding.key] = installed
            log.warning("clearml-hooks: %s %s is not supported (needs %s); not capturing it",
                        dist, installed, binding.requirement)
            return False
        return True  # no metadata (vendored or source checkout): trust it
    except Exception:
        contract.agent_error(f"version check of {binding.key}")
        return True


_registry: Registry | None = None
_registry_lock = threading.Lock()


def registry() -> Registry:
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry()
            _registry.discover_entry_points()
        return _registry
