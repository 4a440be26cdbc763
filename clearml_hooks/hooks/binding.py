"""What a framework binding declares: which functions to hook and how to find the model path.

A binding says *what* to patch; the registry (``hooks.registry``) decides *how*. This module
imports nothing heavy: it is loaded by ``Task.init`` before any framework is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal

ENTRY_POINT_GROUP = "clearml_hooks.bindings"  # the one list of frameworks (pyproject.toml)

Side = Literal["save", "load"]
LocationKind = Literal["file", "dir", "files"]


class Call:
    """One call of a hooked function, as the binding's extractors see it.

    ``instance`` is the bound object for methods (``self``), else None. ``result`` is only set
    after the call returned (for ``Target.locate``). A plain slotted class: it is built on every
    hooked call, and a frozen dataclass costs a microsecond more.
    """

    __slots__ = ("args", "kwargs", "instance", "result")

    def __init__(self, args: tuple, kwargs: dict, instance: Any = None, result: Any = None) -> None:
        self.args = args
        self.kwargs = kwargs
        self.instance = instance
        self.result = result


class Location:
    """What a save wrote (or a load read): one file, a directory, or an explicit file list.

    ``files`` lists absolute paths for kind ``files`` (a TF checkpoint prefix: ``ckpt-1.index``,
    ``ckpt-1.data-00000-of-00001``); ``path`` is then the prefix that names the model.
    """

    __slots__ = ("path", "kind", "files", "iteration", "framework")

    def __init__(self, path: str, kind: LocationKind = "file", files: tuple[str, ...] = (),
                 iteration: int | None = None, framework: str | None = None) -> None:
        self.path = path
        self.kind = kind
        self.files = tuple(files)
        self.iteration = iteration
        self.framework = framework

    def __repr__(self) -> str:
        return (f"Location(path={self.path!r}, kind={self.kind!r}, files={self.files!r}, "
                f"iteration={self.iteration!r}, framework={self.framework!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


PathExtractor = Callable[[Call], Any]
Locator = Callable[[Call, str], "Location | None"]


class Target:
    """One function to hook.

    ``module`` + ``qualname`` name the defining function (``"torch.serialization"``,
    ``"save"``; methods as ``"Model.save"``). ``aliases`` are other public spellings,
    ``"module:qualname"``, that get the very same wrapper object. ``path`` pulls the path (a
    str, an ``os.PathLike`` or a file object with ``.name``) out of the call *before* it runs,
    for the filter. ``locate`` turns the finished call into a ``Location`` (default: the file at
    that path). ``framework`` overrides the binding's ClearML framework name, as a string or a
    function of the call (joblib: the framework of the dumped object).
    """

    __slots__ = ("module", "qualname", "side", "path", "locate", "aliases", "framework",
                 "filter_keys")

    def __init__(self, module: str, qualname: str, side: Side, path: PathExtractor,
                 locate: Locator | None = None, aliases: tuple[str, ...] = (),
                 framework: str | Callable[[Call], str | None] | None = None,
                 filter_keys: tuple[str, ...] | None = None) -> None:
        if side not in ("save", "load"):
            raise ValueError(f"Target side must be 'save' or 'load', got {side!r}")
        self.module = module
        self.qualname = qualname
        self.side = side
        self.path = path
        self.locate = locate
        self.aliases = tuple(aliases)
        self.framework = framework
        self.filter_keys = tuple(filter_keys) if filter_keys else None

    def __repr__(self) -> str:
        return f"Target({self.spelling!r}, {self.side!r})"

    @property
    def spelling(self) -> str:
        return f"{self.module}:{self.qualname}"


class Binding:
    """Base class of a framework binding: subclass it and fill in the class attributes.

    ``key`` is the ``auto_connect_frameworks`` key; ``filter_keys`` the keys whose wildcards
    filter this binding's calls (defaults to ``(key,)``; the first one present in the user's
    dict wins). ``distribution`` + ``requirement`` gate by installed version, read from package
    metadata without importing the framework. ``object_modules``: top-level modules whose
    objects are this framework's models, with their ClearML framework name (a joblib dump of one
    is registered under it).
    """

    key: ClassVar[str]
    framework: ClassVar[str]
    distribution: ClassVar[str | tuple[str, ...]]
    requirement: ClassVar[str] = ""
    filter_keys: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[tuple[Target, ...]] = ()
    object_modules: ClassVar[dict[str, str]] = {}

    @classmethod
    def keys_for_filter(cls, target: Target) -> tuple[str, ...]:
        return target.filter_keys or cls.filter_keys or (cls.key,)

    @classmethod
    def watched_modules(cls) -> set[str]:
        mods = set()
        for t in cls.targets:
            mods.add(t.module)
            mods.update(a.split(":", 1)[0] for a in t.aliases)
        return mods


def top_level_modules(bindings: Iterable[type[Binding]]) -> tuple[str, ...]:
    """Top-level modules of the bindings' targets: a child process joins its parent's task on
    its first import of one (the boot ``sitecustomize`` reads them from the environment)."""
    return tuple(sorted({module.split(".", 1)[0] for binding in bindings
                         for module in binding.watched_modules()}))


# -- helpers that bindings use to describe arguments ------------------------------------------


def arg(name: str, position: int, *, skip_self: bool = False) -> PathExtractor:
    """Extract a parameter given by keyword ``name`` or at ``position`` (0-based, after self)."""

    def extract(call: Call) -> Any:
        if name in call.kwargs:
            return call.kwargs[name]
        if len(call.args) > position:
            return call.args[position]
        return None

    extract.__qualname__ = f"arg({name!r}, {position})"
    return extract


def result_path(call: Call, pre_path: str) -> Location | None:
    """Locate the file at the path the call returned (``tf.train.Checkpoint.save``)."""
    res = call.result
    if isinstance(res, (str, os.PathLike)):
        return Location(path=os.fspath(res))
    return Location(path=pre_path)


def directory(call: Call, pre_path: str) -> Location | None:
    """Locate a directory written by the call (a SavedModel)."""
    return Location(path=pre_path, kind="dir")


def file_or_directory(call: Call, pre_path: str) -> Location | None:
    return Location(path=pre_path, kind="dir" if os.path.isdir(pre_path) else "file")


class PrefixFiles:
    """Locate every file whose name starts with the prefix (``ckpt-3.index``, ``ckpt-3.data-…``)."""

    def __init__(self, suffixes: tuple[str, ...] = ()) -> None:
        self.suffixes = tuple(suffixes)

    def __call__(self, call: Call, pre_path: str) -> Location | None:
        prefix = pre_path
        folder = os.path.dirname(prefix) or "."
        base = os.path.basename(prefix)
        try:
            names = os.listdir(folder)
        except OSError:
            return None
        files = tuple(
            sorted(
                os.path.join(folder, n)
                for n in names
                if n.startswith(base + ".")
                and (not self.suffixes or n[len(base) :].startswith(self.suffixes))
                and os.path.isfile(os.path.join(folder, n))
            )
        )
        if not files:
            return None
        return Location(path=prefix, kind="files", files=files)
