"""XGBoost: ``Booster.save_model`` / ``load_model``, the scikit-learn wrappers, ``Booster(model_file=...)``.

The scikit-learn wrappers (``XGBClassifier``, ``XGBRegressor``, ``XGBRanker``, ...) inherit
``save_model`` / ``load_model`` from ``XGBModel`` and call the Booster's inside: the recursion
guard makes that one capture. ``Booster(model_file=...)`` (also how ``xgb.train(xgb_model=path)``
resumes) is a load through the constructor: ``Booster.__init__`` is hooked, so ``xgb.Booster``
stays a class. Every format is one file at the given path (``.json``, ``.ubj``, the legacy
binary of 1.x); XGBoost expands ``~`` itself, so the location does too.
"""

from __future__ import annotations

import os
from typing import Any

from clearml_hooks.hooks.binding import Binding, Call, Location, Target, arg


def _model_file(call: Call) -> Any:
    """``Booster(model_file=...)``: a path is a load; a Booster or a bytearray is a copy."""
    model_file = arg("model_file", 2)(call)
    return model_file if isinstance(model_file, (str, os.PathLike)) else None


def _path_only(extract):
    """XGBoost reads/writes paths only; an in-memory ``bytearray`` is not a file."""

    def path(call: Call) -> Any:
        raw = extract(call)
        return raw if isinstance(raw, (str, os.PathLike)) else None

    path.__qualname__ = f"path_only({extract.__qualname__})"
    return path


def _expanded(call: Call, pre_path: str) -> Location | None:
    return Location(path=os.path.expanduser(pre_path))


class XGBoostBinding(Binding):
    key = "xgboost"
    framework = "XGBoost"
    distribution = ("xgboost", "xgboost-cpu")
    requirement = "xgboost>=1.6"
    targets = (
        Target("xgboost.core", "Booster.save_model", "save", _path_only(arg("fname", 0)),
               locate=_expanded),
        Target("xgboost.core", "Booster.load_model", "load", _path_only(arg("fname", 0)),
               locate=_expanded),
        Target("xgboost.core", "Booster.__init__", "load", _model_file, locate=_expanded),
        Target("xgboost.sklearn", "XGBModel.save_model", "save", _path_only(arg("fname", 0)),
               locate=_expanded),
        Target("xgboost.sklearn", "XGBModel.load_model", "load", _path_only(arg("fname", 0)),
               locate=_expanded),
    )
