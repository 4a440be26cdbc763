"""Framework names as ClearML spells them (ClearML's vocabulary, bindings or not), and the
framework of a Python object (from the bindings' ``object_modules``)."""

from __future__ import annotations

CANONICAL: tuple[str, ...] = (
    "PyTorch", "TensorFlow", "Keras", "ScikitLearn", "XGBoost", "LightGBM", "CatBoost",
    "MegEngine", "FastAI", "Lightning", "Onnx", "Custom",
)
_BY_LOWER = {name.lower(): name for name in CANONICAL}
_BY_LOWER.update({"torch": "PyTorch", "sklearn": "ScikitLearn", "scikit-learn": "ScikitLearn",
                  "scikit": "ScikitLearn", "tf": "TensorFlow", "fastai": "FastAI",
                  "lightning": "Lightning", "pytorch_lightning": "Lightning", "joblib": "ScikitLearn"})

def canonical_framework(name: str | None) -> str | None:
    """``'pytorch'`` -> ``'PyTorch'``; unknown names are kept as given (ClearML accepts any)."""
    if name is None:
        return None
    return _BY_LOWER.get(str(name).strip().lower(), str(name).strip())


def framework_of(obj: object) -> str | None:
    """The framework an object belongs to, from its class's module, without importing anything:
    the bindings declare which modules are theirs (``Binding.object_modules``)."""
    by_module = _object_modules()
    for cls in type(obj).__mro__:
        top = (cls.__module__ or "").split(".", 1)[0]
        fw = by_module.get(top)
        if fw:
            if fw == "TensorFlow" and ".keras" in cls.__module__:
                return "Keras"
            return fw
    return None


_by_module: dict[str, str] = {}
_seen: tuple[str, ...] = ()


def _object_modules() -> dict[str, str]:
    """Top-level module -> framework name, from the bindings registered now (refreshed when a
    binding is added)."""
    global _by_module, _seen
    from clearml_hooks.hooks.registry import registry

    bindings = registry().bindings
    if tuple(bindings) != _seen:
        merged: dict[str, str] = {}
        for binding in list(bindings.values()):
            for module, framework in binding.object_modules.items():
                merged.setdefault(module, framework)
        _by_module, _seen = merged, tuple(bindings)
    return _by_module
