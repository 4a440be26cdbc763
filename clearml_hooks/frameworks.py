"""Framework names as ClearML spells them, and the framework of a Python object."""

from __future__ import annotations

CANONICAL: tuple[str, ...] = (
    "PyTorch", "TensorFlow", "Keras", "ScikitLearn", "XGBoost", "LightGBM", "CatBoost",
    "MegEngine", "FastAI", "Lightning", "Onnx", "Custom",
)
_BY_LOWER = {name.lower(): name for name in CANONICAL}
_BY_LOWER.update({"torch": "PyTorch", "sklearn": "ScikitLearn", "scikit-learn": "ScikitLearn",
                  "scikit": "ScikitLearn", "tf": "TensorFlow", "fastai": "FastAI",
                  "lightning": "Lightning", "pytorch_lightning": "Lightning", "joblib": "ScikitLearn"})

# top-level module of an object's class -> framework
_MODULE_FRAMEWORK = {
    "torch": "PyTorch", "sklearn": "ScikitLearn", "xgboost": "XGBoost", "lightgbm": "LightGBM",
    "catboost": "CatBoost", "keras": "Keras", "tf_keras": "Keras", "tensorflow": "TensorFlow",
    "megengine": "MegEngine", "fastai": "FastAI", "lightning": "Lightning",
    "pytorch_lightning": "Lightning",
}


def canonical_framework(name: str | None) -> str | None:
    """``'pytorch'`` -> ``'PyTorch'``; unknown names are kept as given (ClearML accepts any)."""
    if name is None:
        return None
    return _BY_LOWER.get(str(name).strip().lower(), str(name).strip())


def framework_of(obj: object) -> str | None:
    """The framework an object belongs to, from its class's module, without importing anything."""
    for cls in type(obj).__mro__:
        top = (cls.__module__ or "").split(".", 1)[0]
        fw = _MODULE_FRAMEWORK.get(top)
        if fw:
            if fw == "TensorFlow" and ".keras" in cls.__module__:
                return "Keras"
            return fw
    return None
