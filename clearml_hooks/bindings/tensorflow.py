"""TensorFlow: ``tf.train.Checkpoint``, ``tf.train.CheckpointManager``, ``tf.saved_model`` and
``tf.compat.v1.train.Saver``.

A checkpoint prefix (``ckpt-3.index`` + ``ckpt-3.data-00000-of-00001``) and a SavedModel
directory are each one snapshot. Calls made by Keras or by TensorFlow itself (Keras 2 writes
its SavedModels and TF-format weights through these very functions, Keras 3 ``Model.export``
through ``tf.saved_model.save``) are not user-level saves: they belong to the Keras binding,
which captures the outer call, or to nobody when the user switched Keras off.
"""

from __future__ import annotations

import os
import re

from clearml_hooks.hooks.binding import (
    Binding,
    Call,
    Location,
    PathExtractor,
    PrefixFiles,
    Target,
    arg,
)
from clearml_hooks.hooks.callers import caller_frame, with_iteration

_CHECKPOINT = PrefixFiles(suffixes=(".index", ".data-"))
_SAVER = PrefixFiles(suffixes=(".index", ".data-", ".meta"))
_NUMBER = re.compile(r"-(\d+)$")
_INTERNAL = frozenset({"keras", "tf_keras", "tensorflow"})


def user_call(extract: PathExtractor) -> PathExtractor:
    """Only capture calls made by user code, not by Keras' or TensorFlow's own internals."""

    def path(call: Call):
        frame = caller_frame(1)
        if frame is not None and frame.f_globals.get("__name__", "").split(".", 1)[0] in _INTERNAL:
            return None
        return extract(call)

    path.__qualname__ = f"user_call({extract.__qualname__})"
    return path


def _manager_prefix(call: Call):
    """``CheckpointManager.save()`` takes no path: filter on the manager's ``directory/ckpt``."""
    return getattr(call.instance, "_prefix", None)


def _manager_latest(call: Call):
    """``CheckpointManager.restore_or_initialize()`` restores the manager's latest checkpoint."""
    return getattr(call.instance, "latest_checkpoint", None)


def _async(call: Call) -> bool:
    """An async checkpoint is still being written when the call returns: not captured."""
    options = call.kwargs.get("options")
    return bool(getattr(options, "experimental_enable_async_checkpoint", False))


def _written_prefix(call: Call, pre_path: str) -> str | None:
    result = call.result
    if isinstance(result, (str, os.PathLike)):
        return os.fsdecode(os.fspath(result))
    if isinstance(result, bytes):
        return os.fsdecode(result)
    return None if result is None else pre_path  # None: nothing saved (CheckpointManager interval)


def _numbered(location: Location | None) -> Location | None:
    if location is None:
        return None
    match = _NUMBER.search(location.path)
    return with_iteration(location, int(match.group(1))) if match else location


def checkpoint_written(call: Call, pre_path: str) -> Location | None:
    """``Checkpoint.save/write``, ``CheckpointManager.save``: the prefix the call returned."""
    if _async(call):
        return None
    prefix = _written_prefix(call, pre_path)
    return None if prefix is None else _numbered(_CHECKPOINT(call, prefix))


def saver_written(call: Call, pre_path: str) -> Location | None:
    """``Saver.save`` returns ``save_path-global_step``; V2 format adds ``.meta``, V1 is one file."""
    prefix = _written_prefix(call, pre_path)
    if prefix is None:
        return None
    if os.path.isfile(prefix):
        return _numbered(Location(path=prefix))
    return _numbered(_SAVER(call, prefix))


def checkpoint_read(call: Call, pre_path: str) -> Location | None:
    """A restore reads a prefix's files, or the variables of a SavedModel directory."""
    if os.path.isdir(pre_path):
        return Location(path=pre_path, kind="dir")
    if os.path.isfile(pre_path):
        return Location(path=pre_path)
    return _CHECKPOINT(call, pre_path)


def saver_read(call: Call, pre_path: str) -> Location | None:
    """Same files as ``Saver.save`` wrote (``.meta`` too), so the load links to that snapshot."""
    if os.path.isfile(pre_path):
        return Location(path=pre_path)
    return _SAVER(call, pre_path)


def checkpoint_restored(call: Call, pre_path: str) -> Location | None:
    """``restore_or_initialize`` returns the restored prefix, or None when it initialized."""
    prefix = _written_prefix(call, pre_path)
    return None if prefix is None else checkpoint_read(call, prefix)


def saved_model_dir(call: Call, pre_path: str) -> Location | None:
    return Location(path=pre_path, kind="dir") if os.path.isdir(pre_path) else None


_CKPT = "tensorflow.python.checkpoint.checkpoint"
_SM_API = ("tensorflow._api.v2.saved_model", "tensorflow._api.v2.compat.v2.saved_model")
_SM_V1 = "tensorflow._api.v2.compat.v1.saved_model"


class TensorFlowBinding(Binding):
    key = "tensorflow"
    framework = "TensorFlow"
    object_modules = {"tensorflow": "TensorFlow"}
    distribution = (
        "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
        "tf-nightly", "tf-nightly-cpu",
    )
    requirement = "tensorflow>=2.13"
    targets = (
        # tf.train.Checkpoint (TF2) and tf.compat.v1.train.Checkpoint
        *(
            t
            for cls in ("Checkpoint", "CheckpointV1")
            for t in (
                Target(_CKPT, f"{cls}.save", "save", user_call(arg("file_prefix", 0)),
                       checkpoint_written),
                Target(_CKPT, f"{cls}.write", "save", user_call(arg("file_prefix", 0)),
                       checkpoint_written),
                Target(_CKPT, f"{cls}.restore", "load", user_call(arg("save_path", 0)),
                       checkpoint_read),
                Target(_CKPT, f"{cls}.read", "load", user_call(arg("save_path", 0)),
                       checkpoint_read),
            )
        ),
        Target("tensorflow.python.checkpoint.checkpoint_management", "CheckpointManager.save",
               "save", user_call(_manager_prefix), checkpoint_written),
        Target("tensorflow.python.checkpoint.checkpoint_management",
               "CheckpointManager.restore_or_initialize", "load", user_call(_manager_latest),
               checkpoint_restored),
        # tf.saved_model.save / load
        Target("tensorflow.python.saved_model.save", "save", "save",
               user_call(arg("export_dir", 1)), saved_model_dir,
               aliases=(*(f"{m}:save" for m in _SM_API), f"{_SM_V1}:save",
                        f"{_SM_V1}.experimental:save")),
        Target("tensorflow.python.saved_model.load", "load", "load",
               user_call(arg("export_dir", 0)), saved_model_dir,
               aliases=(*(f"{m}:load" for m in _SM_API), f"{_SM_V1}:load_v2")),
        # tf.compat.v1.train.Saver (TF1 name-based checkpoints)
        Target("tensorflow.python.training.saver", "Saver.save", "save",
               user_call(arg("save_path", 1)), saver_written),
        Target("tensorflow.python.training.saver", "Saver.restore", "load",
               user_call(arg("save_path", 1)), saver_read),
    )
