"""scikit-learn models through joblib: ``joblib.dump`` / ``joblib.load``.

Hooks the public functions ``joblib.numpy_pickle.dump`` / ``load`` (and their aliases
``joblib.dump`` / ``joblib.load``), never joblib internals: ClearML's hook on
``numpy_pickle._read_fileobject`` broke when joblib 1.5 renamed it. joblib writes exactly the
file it is given, whatever the compression (``compress=``, or inferred from ``.gz`` / ``.z`` /
``.xz`` / ``.lzma`` / ``.bz2``), so the default one-file location fits.

joblib calls the same functions for its own purposes: ``joblib.Memory`` caches results through
its store backend, and ``Parallel`` memory-maps large arrays for its workers. Those calls come
from inside the joblib package (and scikit-learn's dataset cache from ``sklearn.datasets``), so
a call whose direct caller lives there is not a model and is not captured. Looking at one or two
frames costs well under a microsecond and does not depend on how a Memory location is named.

A dump into a plain open file is captured (flushed when the call returns); a dump into a
``gzip.open(...)`` (bz2, lzma) writer is not: its last bytes reach the disk only when the user
closes it, after the call, and a snapshot then would be a truncated file.
"""

from __future__ import annotations

import io
import os
from typing import Any

from clearml_hooks.frameworks import framework_of
from clearml_hooks.hooks.binding import Binding, Call, Target, arg
from clearml_hooks.hooks.callers import caller_module

# modules whose own dump/load calls are caches, not models
_INTERNAL_CALLERS = ("joblib.", "sklearn.datasets")


def _internal_call() -> bool:
    module, _ = caller_module(3)
    return module == "joblib" or module.startswith(_INTERNAL_CALLERS)


_PLAIN_FILES = (io.FileIO, io.BufferedWriter, io.BufferedRandom)


def _complete_when_flushed(fileobj: Any) -> bool:
    """A plain OS file holds every byte once flushed; a ``gzip.open`` / ``bz2`` / ``lzma`` writer
    only once the user closes it (its last block and trailer), after the hooked call returned."""
    inner = getattr(fileobj, "file", fileobj)  # tempfile.NamedTemporaryFile's wrapper
    return isinstance(inner, _PLAIN_FILES)


def _user_path(extract, *, writing: bool):
    def path(call: Call) -> Any:
        raw = extract(call)
        if raw is None or _internal_call():
            return None
        if writing and not isinstance(raw, (str, bytes, os.PathLike)) and \
                getattr(raw, "name", None) and not _complete_when_flushed(raw):
            return None  # a named compressing writer: capturing now would store a truncated file
        return raw

    path.__qualname__ = f"user_path({extract.__qualname__})"
    return path


def framework_of_value(obj: Any) -> str | None:
    """The framework of a dumped/loaded object; a dict/list/tuple of models counts by its items."""
    fw = framework_of(obj)
    if fw is not None:
        return fw
    if isinstance(obj, dict):
        items = list(obj.values())[:32]
    elif isinstance(obj, (list, tuple)):
        items = list(obj[:32])
    else:
        return None
    for item in items:
        fw = framework_of(item)
        if fw is not None:
            return fw
    return None


def _dumped_framework(call: Call) -> str | None:
    value = call.kwargs["value"] if "value" in call.kwargs else (call.args[0] if call.args else None)
    return framework_of_value(value)


def _loaded_framework(call: Call) -> str | None:
    return framework_of_value(call.result)


class JoblibBinding(Binding):
    key = "joblib"
    framework = "ScikitLearn"
    object_modules = {"sklearn": "ScikitLearn"}
    distribution = "joblib"
    requirement = "joblib>=1.0"
    filter_keys = ("joblib", "scikit")
    targets = (
        Target("joblib.numpy_pickle", "dump", "save", _user_path(arg("filename", 1), writing=True),
               aliases=("joblib:dump",), framework=_dumped_framework),
        Target("joblib.numpy_pickle", "load", "load", _user_path(arg("filename", 0), writing=False),
               aliases=("joblib:load",), framework=_loaded_framework),
    )
