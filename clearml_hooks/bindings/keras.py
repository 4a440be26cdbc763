"""Keras: ``Model.save`` / ``save_weights`` / ``load_weights`` / ``export`` and
``keras.saving.save_model`` / ``load_model`` / ``save_weights`` / ``load_weights``.

One binding covers the three Keras code bases that ship the same API:

- Keras 3 (``keras.src.models.model``): standalone ``keras`` on any backend, and ``tf.keras``
  from TensorFlow 2.16 on;
- Keras 2 (``keras.src.engine.training``): ``tf.keras`` up to TensorFlow 2.15;
- tf-keras (``tf_keras.src.engine.training``): Keras 2 on TensorFlow >= 2.16 with
  ``TF_USE_LEGACY_KERAS=1``.

``Model.save`` calls ``saving_api.save_model`` (and Keras 2's SavedModel / TF-format weights
call ``tf.saved_model.save`` / ``tf.train.Checkpoint.write``): the registry's recursion guard
captures only the outermost call, so each user-level call is one snapshot. ``ModelCheckpoint``
calls ``model.save`` / ``model.save_weights`` itself; the epoch it saves for becomes the
snapshot's iteration.
"""

from __future__ import annotations

import os

from clearml_hooks.hooks.binding import Binding, Call, Location, PrefixFiles, Target, arg
from clearml_hooks.hooks.callers import caller_frame, with_iteration

# a TF-format checkpoint (Keras 2 ``save_weights`` without .h5): ``w.index`` + ``w.data-…``
_TF_CHECKPOINT = PrefixFiles(suffixes=(".index", ".data-"))


def _checkpoint_epoch() -> int | None:
    """The epoch a ``ModelCheckpoint`` saves for (1-based, as in its ``{epoch}``), else None.

    Every Keras version calls ``self.model.save(...)`` from a method of the callback itself
    (``_save_model``, or Keras 2.15's ``_save_handler``), and keeps the epoch in
    ``_current_epoch``: only the hooked call's direct caller is looked at.
    """
    frame = caller_frame(2)
    callback = frame.f_locals.get("self") if frame is not None else None
    epoch = getattr(callback, "_current_epoch", None)
    if isinstance(epoch, int) and hasattr(callback, "save_weights_only"):
        return epoch + 1
    return None


def _sharded(path: str) -> Location | None:
    """Keras 3 sharded weights: ``m.weights.json`` plus the ``m_00000.weights.h5`` it lists."""
    index = path if path.endswith(".json") else os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(index):
        return None
    import json  # lazily: Task.init loads every binding module

    with open(index, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map", {})
    folder = os.path.dirname(os.path.abspath(index))
    shards = {os.path.join(folder, name) for names in weight_map.values() for name in names}
    files = (os.path.abspath(index), *sorted(s for s in shards if os.path.isfile(s)))
    return Location(path=index, kind="files", files=files)


def find_model(call: Call, pre_path: str) -> Location | None:
    """What a Keras save wrote (or a load read): a file, a directory or a TF checkpoint prefix."""
    if pre_path.endswith(".weights.json") or (
        call.kwargs.get("max_shard_size") is not None and pre_path.endswith(".weights.h5")
    ):
        return _sharded(pre_path)
    if os.path.isdir(pre_path):
        return Location(path=pre_path, kind="dir")
    if os.path.isfile(pre_path):
        return Location(path=pre_path)
    return _TF_CHECKPOINT(call, pre_path)


def saved_model(call: Call, pre_path: str) -> Location | None:
    location = find_model(call, pre_path)
    if location is None:
        return None
    epoch = _checkpoint_epoch()
    return location if epoch is None else with_iteration(location, epoch)


_EXPORT_FRAMEWORKS = {
    "tf_saved_model": "TensorFlow",
    "onnx": "Onnx",
    "torch": "PyTorch",
    "openvino": "OpenVINO",
    "litert": "TensorFlow_Lite",
}


def export_framework(call: Call) -> str:
    """``Model.export`` writes an inference artifact (a TF SavedModel by default), not a Keras model."""
    fmt = call.kwargs.get("format", call.args[1] if len(call.args) > 1 else "tf_saved_model")
    return _EXPORT_FRAMEWORKS.get(fmt, "Keras") if isinstance(fmt, str) else "Keras"


# public re-exports of ``saving_api`` functions, per code base (missing modules are skipped)
_API_PACKAGES = (
    # Keras 3
    "keras", "keras._tf_keras.keras", "keras.api", "keras.api._tf_keras.keras",
    # Keras 2 (tf.keras of TF <= 2.15) and tf-keras
    "keras.api._v2.keras", "keras.api._v1.keras",
    "tf_keras", "tf_keras.api._v2.keras", "tf_keras.api._v1.keras",
)


def _aliases(name: str, subpackages: tuple[str, ...], prefixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        f"{pkg}.{sub}:{name}"
        for pkg in _API_PACKAGES
        if pkg.split(".", 1)[0] in prefixes
        for sub in subpackages
    )


def _targets() -> tuple[Target, ...]:
    targets = []
    models = (
        "keras.src.models.model",  # Keras 3
        "keras.src.engine.training",  # Keras 2
        "tf_keras.src.engine.training",  # tf-keras
    )
    for module in models:
        targets += [
            Target(module, "Model.save", "save", arg("filepath", 0), saved_model),
            Target(module, "Model.save_weights", "save", arg("filepath", 0), saved_model),
            Target(module, "Model.load_weights", "load", arg("filepath", 0), find_model),
            Target(module, "Model.export", "save", arg("filepath", 0), find_model,
                   framework=export_framework),
        ]
    for module, prefixes in (("keras.src.saving.saving_api", ("keras",)),
                             ("tf_keras.src.saving.saving_api", ("tf_keras",))):
        targets += [
            Target(module, "save_model", "save", arg("filepath", 1), saved_model,
                   aliases=_aliases("save_model", ("saving", "models"), prefixes)),
            Target(module, "load_model", "load", arg("filepath", 0), find_model,
                   aliases=_aliases("load_model", ("saving", "models"), prefixes)),
            # public as keras.saving.save_weights / load_weights in recent Keras 3
            Target(module, "save_weights", "save", arg("filepath", 1), saved_model,
                   aliases=_aliases("save_weights", ("saving",), prefixes)),
            Target(module, "load_weights", "load", arg("filepath", 1), find_model,
                   aliases=_aliases("load_weights", ("saving",), prefixes)),
        ]
    return tuple(targets)


class KerasBinding(Binding):
    key = "keras"
    framework = "Keras"
    object_modules = {"keras": "Keras", "tf_keras": "Keras"}
    distribution = ("keras", "tf-keras")
    requirement = "keras>=2.13"
    filter_keys = ("keras", "tensorflow")
    targets = _targets()

