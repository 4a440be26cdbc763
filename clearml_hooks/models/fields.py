"""Small pure helpers of the model API: which store, label and design validation, framework
guesses. Kept apart so every model module (and the task) shares one definition."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from clearml_hooks import context
from clearml_hooks.store import Store, open_store


def default_store() -> Store:
    """The current task's store, else the one the environment and config file name."""
    task = context.current_task()
    return task.store if task is not None else open_store()

# file extension -> framework, for weights registered without a framework (as ClearML guesses)
_EXT_FRAMEWORK = {
    ".pt": "PyTorch", ".pth": "PyTorch", ".h5": "Keras", ".hdf5": "Keras", ".keras": "Keras",
    ".pb": "TensorFlow", ".tflite": "TensorFlow", ".cbm": "CatBoost", ".onnx": "Onnx",
    ".pkl": "ScikitLearn", ".joblib": "ScikitLearn", ".mge": "MegEngine",
}

def guess_framework(filename: str | None) -> str | None:
    if not filename:
        return None
    name = filename.lower().rstrip("/")
    for ext, fw in _EXT_FRAMEWORK.items():
        if name.endswith(ext):
            return fw
    return None


def validate_labels(labels: Any) -> dict[str, int]:
    """Label enumeration as ``{str: int}``; anything else is a ``ValueError`` (bools too)."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"label enumeration must be a dict of label -> int, got {type(labels).__name__}")
    out = {}
    for key, value in labels.items():
        if not isinstance(key, str):
            raise ValueError(f"label enumeration keys must be strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"label enumeration values must be integers: {key!r} -> {value!r}")
        out[key] = int(value)
    return out


def resolve_config(config_text: str | None, config_dict: Mapping | None) -> tuple[str | None, str | None]:
    """(config_text, config_dict JSON). Exactly as ClearML: one of the two, never both."""
    if config_text is not None and config_dict is not None:
        raise ValueError("specify config_text or config_dict, not both")
    if config_dict is not None:
        if not isinstance(config_dict, Mapping):
            raise ValueError("config_dict must be a dict")
        try:
            as_json = json.dumps(dict(config_dict), default=str)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config_dict cannot be stored: {exc}") from exc
        return json.dumps(dict(config_dict), indent=2, default=str), as_json
    if config_text is not None and not isinstance(config_text, str):
        raise ValueError("config_text must be a string")
    return config_text, None


def parse_config_text(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else {"value": value}
    except ValueError:
        pass
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text)
    except Exception:
        return {}
