"""CatBoost: ``save_model`` / ``load_model`` of ``CatBoost`` and its subclasses.

``CatBoostClassifier``, ``CatBoostRegressor`` and ``CatBoostRanker`` inherit both methods from
``CatBoost``, which is the class patched. Every export format (cbm, json, onnx, cpp, python,
coreml, pmml) is one file at the given path. ``fit(init_model=path)`` loads through
``CatBoost().load_model`` and is captured as an input model. CatBoost's own scratch files
(``sample_gaussian_process``'s prior model in a temp file, the ``catboost.eval`` fold models)
are not models of the user and are not captured.
"""

from __future__ import annotations

from typing import Any

from clearml_hooks.hooks.binding import Binding, Call, Target, arg
from clearml_hooks.hooks.callers import caller_module

_SCRATCH_FUNCTIONS = {"sample_gaussian_process"}


def _scratch() -> bool:
    module, function = caller_module(3)
    return module.startswith("catboost.") and (
        function in _SCRATCH_FUNCTIONS or module.startswith("catboost.eval")
    )


_fname = arg("fname", 0)


def _save_path(call: Call) -> Any:
    raw = _fname(call)
    if raw is None or _scratch():
        return None
    return raw


def _load_path(call: Call) -> Any:
    """``load_model(fname)`` or ``load_model(stream=f)`` (a named file object); not ``blob=``."""
    raw = _fname(call)
    if raw is None:
        raw = call.kwargs.get("stream")
        if raw is None and len(call.args) > 2:
            raw = call.args[2]
    if raw is None or _scratch():
        return None
    return raw


class CatBoostBinding(Binding):
    key = "catboost"
    framework = "CatBoost"
    object_modules = {"catboost": "CatBoost"}
    distribution = "catboost"
    requirement = "catboost>=1.0"
    targets = (
        Target("catboost.core", "CatBoost.save_model", "save", _save_path),
        Target("catboost.core", "CatBoost.load_model", "load", _load_path),
    )
