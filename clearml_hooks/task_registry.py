"""The model-registry side of ``Task``: connect models, update the output model, labels."""

from __future__ import annotations


class TaskRegistryMixin:
    """Mixed into ``Task``; ``self.id``, ``self.store``, ``self.models`` come from Task."""
