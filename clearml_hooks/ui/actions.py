"""Edits from the UI, through the same registry API the SDK uses (``Model``), so a change made
in the browser is exactly what ``Model(id).publish()`` & co. would have done."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from clearml_hooks.models import Model
from clearml_hooks.store.model_ops import METADATA_TYPES, cast_metadata

if TYPE_CHECKING:
    from clearml_hooks.store import Store

MODEL_ACTIONS = ("publish", "archive", "unarchive", "add_tags", "remove_tags", "rename",
                 "comment", "set_metadata", "delete_metadata", "labels")
BATCH_ACTIONS = ("publish", "archive", "unarchive", "add_tags", "remove_tags")


class ActionError(ValueError):
    """A form that cannot be applied (400 with this message)."""


def _tags(text: str) -> list[str]:
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if not tags:
        raise ActionError("give at least one tag (comma separated)")
    return tags


_TYPES = {"int": int, "float": float, "bool": bool, "list": list, "tuple": tuple, "dict": dict}


def _check_typed(value: str, v_type: str) -> None:
    """A typed value typed in a form must read back as its type: the SDK stores what it is
    given (``get_metadata_casted`` then returns the bare string), so a typo would be kept."""
    expected = _TYPES.get(v_type)
    if expected is not None and not isinstance(cast_metadata(value, v_type), expected):
        raise ActionError(f"{value!r} is not a {v_type}")


def apply(store: Store, model_id: str, action: str, form: Mapping[str, str]) -> str:
    """Apply one action to one model; returns a short message of what was done."""
    model = Model(model_id, store=store)  # UnknownModel (a ValueError) for a bad id
    if action == "publish":
        model.publish()
    elif action == "archive":
        model.archive()
    elif action == "unarchive":
        model.unarchive()
    elif action == "add_tags":
        model.add_tags(_tags(form.get("tags", "")))
    elif action == "remove_tags":
        model.remove_tags(_tags(form.get("tags", "")))
    elif action == "rename":
        name = form.get("name", "").strip()
        if not name:
            raise ActionError("a model name cannot be empty")
        model.name = name
    elif action == "comment":
        model.comment = form.get("comment", "")
    elif action == "set_metadata":
        key, v_type = form.get("key", "").strip(), form.get("type", "str")
        if not key:
            raise ActionError("a metadata key cannot be empty")
        if v_type not in METADATA_TYPES:
            raise ActionError(f"type must be one of {', '.join(METADATA_TYPES)}")
        value = form.get("value", "")
        _check_typed(value, v_type)
        model.set_metadata(key, value, v_type)
    elif action == "delete_metadata":
        key = form.get("key", "")
        rest = {k: e for k, e in model.get_all_metadata().items() if k != key}
        model.set_all_metadata(rest, replace=True)
    elif action == "labels":
        _set_labels(store, model_id, form.get("labels", ""))
    else:
        raise ActionError(f"unknown action {action!r}")
    return action


def _set_labels(store: Store, model_id: str, text: str) -> None:
    """Labels as ``{"name": int}`` JSON; refused on a published model (as ``update_labels``)."""
    from clearml_hooks.models import _validate_labels
    from clearml_hooks.store import model_ops

    try:
        labels = json.loads(text or "{}")
    except ValueError as exc:
        raise ActionError(f"labels must be a JSON object of label -> integer: {exc}") from None
    labels = _validate_labels(labels)
    model_ops.update_fields(store.catalog, model_id, check_published=True,
                            labels=json.dumps(labels))


def apply_batch(store: Store, ids: list[str], action: str, form: Mapping[str, str]) -> int:
    if action not in BATCH_ACTIONS:
        raise ActionError(f"unknown batch action {action!r}")
    if not ids:
        raise ActionError("select at least one model")
    for model_id in ids:
        apply(store, model_id, action, form)
    return len(ids)
