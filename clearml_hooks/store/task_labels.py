"""A task's label enumeration and the models captured by the task (ClearML gives a task's
output models the task's labels, ``Task.set_model_label_enumeration``).

New captured models take the task's labels at ingest (``ingest._captured_model``); this sets
the task's labels and hands them to the models it captured already, in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import select, update

from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import SqlCatalog, now


def set_task_labels(catalog: SqlCatalog, task_id: str, labels: Mapping[str, int]) -> int:
    """Set the task's enumeration; the task's captured, unpublished models whose labels are
    empty or still the task's previous ones follow it (labels set on a model itself stay).
    Returns how many models changed."""
    new = json.dumps(dict(labels))
    m = s.models
    with catalog.write() as conn:
        old = conn.execute(select(s.tasks.c.labels).where(s.tasks.c.id == task_id)).scalar()
        conn.execute(update(s.tasks).where(s.tasks.c.id == task_id).values(
            labels=new, updated=now()))
        inherited = ["", "{}"] + ([old] if old else [])
        result = conn.execute(update(m).where(
            m.c.task_id == task_id, m.c.origin == "captured", m.c.published.is_(False),
            m.c.labels.in_(inherited), m.c.labels != new).values(labels=new, updated=now()))
        return result.rowcount
