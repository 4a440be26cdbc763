"""LightGBM: ``Booster.save_model``, ``Booster(model_file=...)``, ``CVBooster``, ``init_model``.

``lgb.Booster`` stays a class (ClearML replaces it with a function, which breaks
``isinstance`` and subclassing): the load through the constructor is a hook on
``Booster.__init__``. ``LGBMModel.booster_`` is a plain Booster, so
``model.booster_.save_model(...)`` is the same hook. ``lgb.train(init_model=path)`` reads the
file through ``_InnerPredictor`` (its constructor in 3.x, ``from_model_file`` in 4.x): an input
model. ``CVBooster.save_model`` / ``CVBooster(model_file=...)`` (4.x) write/read one JSON file.
"""

from __future__ import annotations

import os
from typing import Any

from clearml_hooks.hooks.binding import Binding, Call, Target, arg


def _path_only(extract):
    """Only a path is a file; ``model_str=``, a handle or a Booster is in memory."""

    def path(call: Call) -> Any:
        raw = extract(call)
        return raw if isinstance(raw, (str, os.PathLike)) else None

    path.__qualname__ = f"path_only({extract.__qualname__})"
    return path


class LightGBMBinding(Binding):
    key = "lightgbm"
    framework = "LightGBM"
    object_modules = {"lightgbm": "LightGBM"}
    distribution = "lightgbm"
    requirement = "lightgbm>=3.3"
    targets = (
        Target("lightgbm.basic", "Booster.save_model", "save", _path_only(arg("filename", 0))),
        Target("lightgbm.basic", "Booster.__init__", "load", _path_only(arg("model_file", 2))),
        # lgb.train / lgb.cv(init_model=path)
        Target("lightgbm.basic", "_InnerPredictor.__init__", "load",
               _path_only(arg("model_file", 0))),  # 3.x
        Target("lightgbm.basic", "_InnerPredictor.from_model_file", "load",
               _path_only(arg("model_file", 0))),  # 4.x
        Target("lightgbm.engine", "CVBooster.save_model", "save", _path_only(arg("filename", 0))),
        Target("lightgbm.engine", "CVBooster.__init__", "load", _path_only(arg("model_file", 0))),
    )
