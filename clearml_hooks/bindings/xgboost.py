"""XGBoost: ``Booster.save_model`` / ``load_model``, the scikit-learn wrappers, ``Booster(model_file=...)``.

The scikit-learn wrappers (``XGBClassifier``, ``XGBRegressor``, ``XGBRanker``, ...) inherit
``save_model`` / ``load_model`` from ``XGBModel`` and call the Booster's inside: the recursion
guard makes that one capture. ``Booster(model_file=...)`` (also how ``xgb.train(xgb_model=path)``
resumes) is a load through the constructor: ``Booster.__init__`` is hooked, so ``xgb.Booster``
stays a class. Every format is one file at the given path (``.json``, ``.ubj``, the legacy
binary of 1.x).
"""

from __future__ import annotations

import os
from typing import Any

from clearml_hooks.hooks.binding import Binding, Call, Target, arg


def _file(extract):
    """The path XGBoost really opens: it expands ``~`` itself (so must the filter, and the
    overwrite protection before a save). A ``bytearray`` or a Booster (``Booster(model_file=
    other_booster)`` copies it) is in memory, not a file."""

    def path(call: Call) -> Any:
        raw = extract(call)
        if isinstance(raw, (str, os.PathLike)):
            return os.path.expanduser(os.fspath(raw))
        return None

    path.__qualname__ = f"file({extract.__qualname__})"
    return path


class XGBoostBinding(Binding):
    key = "xgboost"
    framework = "XGBoost"
    object_modules = {"xgboost": "XGBoost"}
    distribution = ("xgboost", "xgboost-cpu")
    requirement = "xgboost>=1.6"
    targets = (
        Target("xgboost.core", "Booster.save_model", "save", _file(arg("fname", 0))),
        Target("xgboost.core", "Booster.load_model", "load", _file(arg("fname", 0))),
        Target("xgboost.core", "Booster.__init__", "load", _file(arg("model_file", 2))),
        Target("xgboost.sklearn", "XGBModel.save_model", "save", _file(arg("fname", 0))),
        Target("xgboost.sklearn", "XGBModel.load_model", "load", _file(arg("fname", 0))),
    )
