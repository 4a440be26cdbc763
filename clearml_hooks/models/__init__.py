"""Model objects with ClearML's ``Model`` / ``InputModel`` / ``OutputModel`` API.

One module per job: ``base`` (Model), ``input``, ``output``, ``fetching`` (bytes into the cache),
``archives`` (package zips), ``urls``, ``fields`` (validation). The old private names stay
importable from here for the callers that use them.
"""

from clearml_hooks.models.base import Model
from clearml_hooks.models.fields import default_store
from clearml_hooks.models.fields import validate_labels as _validate_labels
from clearml_hooks.models.input import InputModel
from clearml_hooks.models.output import OutputModel
from clearml_hooks.models.output import parent_input as _parent_input
from clearml_hooks.models.urls import normalize_url as _normalize_url

__all__ = ["InputModel", "Model", "OutputModel", "default_store"]
__all__ += ["_normalize_url", "_parent_input", "_validate_labels"]
