"""Framework bindings shipped with clearml-hooks: one module per framework.

Each is also declared in the ``clearml_hooks.bindings`` entry-point group (pyproject.toml), the
same group a third party uses to add a framework. ``BUILTIN`` lets ``Task.init`` register the
shipped ones without scanning package metadata (importlib.metadata alone costs ~40 ms).
"""

BUILTIN: dict[str, str] = {
    "pytorch": "clearml_hooks.bindings.pytorch:PyTorchBinding",
    "tensorflow": "clearml_hooks.bindings.tensorflow:TensorFlowBinding",
    "keras": "clearml_hooks.bindings.keras:KerasBinding",
    "joblib": "clearml_hooks.bindings.joblib:JoblibBinding",
    "xgboost": "clearml_hooks.bindings.xgboost:XGBoostBinding",
    "catboost": "clearml_hooks.bindings.catboost:CatBoostBinding",
    "lightgbm": "clearml_hooks.bindings.lightgbm:LightGBMBinding",
    "fastai": "clearml_hooks.bindings.fastai:FastAIBinding",
    "megengine": "clearml_hooks.bindings.megengine:MegEngineBinding",
    "lightning": "clearml_hooks.bindings.lightning:LightningBinding",
}
