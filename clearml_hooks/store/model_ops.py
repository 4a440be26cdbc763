"""Registry operations over the SQL catalog: tags, metadata, queries, publish/archive, remove.

Kept apart from ``catalog.py`` (the capture journal) so the registry can grow without touching the
hot path. Every write is one transaction: a call that fails changes nothing already stored.
``models.tags`` (JSON, for display) and ``model_tags`` (rows, for queries) are always written
together, as are ``models.system_tags`` and the ``archived`` flag.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    and_,
    delete,
    exists,
    false,
    func,
    intersect,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection

from clearml_hooks.store import events
from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import now

if TYPE_CHECKING:
    from clearml_hooks.store.catalog import SqlCatalog

ARCHIVED_TAG = "archived"
PACKAGE_TAG = "package"
# ClearML's metadata types (anything else is stored as "str")
METADATA_TYPES = ("float", "int", "bool", "str", "basestring", "list", "tuple", "dict")


class UnknownModel(ValueError):
    """No model with this id: a ``ValueError``, so ClearML-style ``except ValueError`` works."""

    def __init__(self, model_id: str, where: str = "") -> None:
        self.model_id = model_id
        super().__init__(f"no model with id {model_id!r}" + (f" in {where}" if where else ""))


class ModelPublished(ValueError):
    """The model is published: its weights, labels and design can no longer change."""


# -- reading ------------------------------------------------------------------------------------

def _model_select():
    return (select(s.models, s.projects.c.name.label("project"))
            .select_from(s.models.outerjoin(s.projects, s.projects.c.id == s.models.c.project_id)))


def get_row(catalog: SqlCatalog, model_id: str, conn: Connection | None = None) -> dict:
    """The model's row (with its project's name); ``UnknownModel`` if there is none."""
    q = _model_select().where(s.models.c.id == model_id)
    if conn is not None:
        row = conn.execute(q).mappings().first()
    else:
        with catalog.read() as c:
            row = c.execute(q).mappings().first()
    if row is None:
        raise UnknownModel(model_id)
    return dict(row)


def _require(conn: Connection, model_id: str) -> dict:
    row = conn.execute(select(s.models).where(s.models.c.id == model_id)).mappings().first()
    if row is None:
        raise UnknownModel(model_id)
    return dict(row)


# -- plain field updates ------------------------------------------------------------------------

def update_fields(catalog: SqlCatalog, model_id: str, *, check_published: bool = False,
                  **values: Any) -> None:
    """Set columns of one model (``updated`` is bumped)."""
    with catalog.write() as conn:
        row = _require(conn, model_id)
        if check_published and row["published"]:
            raise ModelPublished(f"model {model_id} is published and cannot be changed")
        values["updated"] = now()
        conn.execute(update(s.models).where(s.models.c.id == model_id).values(**values))
        events.fields_changed(conn, row, values)


def set_project(catalog: SqlCatalog, model_id: str, project: str) -> None:
    with catalog.write() as conn:
        row = _require(conn, model_id)
        project_id = catalog.ensure_project(conn, project)
        conn.execute(update(s.models).where(s.models.c.id == model_id).values(
            project_id=project_id, updated=now()))
        if row["project_id"] != project_id:
            old = conn.execute(select(s.projects.c.name).where(
                s.projects.c.id == row["project_id"])).scalar()
            events.emit(conn, "moved", model_id=model_id, old_project=old)


# -- tags ---------------------------------------------------------------------------------------

def clean_tags(tags: Iterable[Any] | None) -> list[str]:
    """Tags as a de-duplicated list of non-empty strings, order kept."""
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise ValueError(f"tags must be strings, got {tag!r}")
        tag = tag.strip()
        if not tag:
            raise ValueError("tags cannot be empty strings")
        if len(tag) > 255:
            raise ValueError(f"tag {tag[:40]!r}... is longer than 255 characters")
        if tag not in out:
            out.append(tag)
    return out


def write_tags(conn: Connection, model_id: str, tags: Sequence[str]) -> None:
    """Replace a model's tags in both places (JSON column and model_tags rows)."""
    conn.execute(delete(s.model_tags).where(s.model_tags.c.model_id == model_id))
    if tags:
        conn.execute(s.model_tags.insert(), [{"model_id": model_id, "tag": t} for t in tags])
    conn.execute(update(s.models).where(s.models.c.id == model_id).values(
        tags=json.dumps(list(tags)), updated=now()))


def set_tags(catalog: SqlCatalog, model_id: str, tags: Iterable[str]) -> list[str]:
    tags = clean_tags(tags)
    with catalog.write() as conn:
        _require(conn, model_id)
        events.tags_changed(conn, model_id, tags)
        write_tags(conn, model_id, tags)
    return tags


def edit_tags(catalog: SqlCatalog, model_id: str, add: Iterable[str] = (),
              remove: Iterable[str] = ()) -> list[str]:
    """Add and remove tags in one transaction (read-modify-write under the write lock)."""
    add, remove = clean_tags(add), set(clean_tags(remove))
    with catalog.write() as conn:
        row = _require(conn, model_id)
        tags = [t for t in json.loads(row["tags"]) if t not in remove]
        tags += [t for t in add if t not in tags]
        events.tags_changed(conn, model_id, tags)
        write_tags(conn, model_id, tags)
    return tags


def _set_system_tag(conn: Connection, row: dict, tag: str, on: bool) -> list[str]:
    return system_tags_with(row, tag, on)


def system_tags_with(row: Mapping[str, Any], tag: str, on: bool) -> list[str]:
    """A model row's system tags with ``tag`` switched on or off."""
    tags = [t for t in json.loads(row["system_tags"]) if t != tag]
    if on:
        tags.append(tag)
    return tags


# -- publish / archive --------------------------------------------------------------------------

def publish(catalog: SqlCatalog, model_id: str) -> bool:
    """Publish; False (a no-op) when it already is."""
    with catalog.write() as conn:
        row = _require(conn, model_id)
        if row["published"]:
            return False
        conn.execute(update(s.models).where(s.models.c.id == model_id).values(
            published=True, updated=now()))
        events.emit(conn, "published", model_id=model_id)
        return True


def set_archived(catalog: SqlCatalog, model_id: str, archived: bool) -> bool:
    """Archive or unarchive; False when nothing changed."""
    with catalog.write() as conn:
        row = _require(conn, model_id)
        if bool(row["archived"]) == archived:
            return False
        conn.execute(update(s.models).where(s.models.c.id == model_id).values(
            archived=archived, updated=now(),
            system_tags=json.dumps(_set_system_tag(conn, row, ARCHIVED_TAG, archived))))
        events.emit(conn, "archived" if archived else "unarchived", model_id=model_id)
        return True


def set_package(conn: Connection, model_id: str, is_package: bool) -> None:
    row = _require(conn, model_id)
    conn.execute(update(s.models).where(s.models.c.id == model_id).values(
        is_package=is_package,
        system_tags=json.dumps(_set_system_tag(conn, row, PACKAGE_TAG, is_package))))


# -- metadata -----------------------------------------------------------------------------------

def metadata_type(value: Any, v_type: Any) -> str:
    """The stored type name: ``v_type`` (a name or a type), else inferred from the value."""
    if v_type is None:
        v_type = type(value)
    name = v_type.__name__ if isinstance(v_type, type) else str(v_type)
    return name if name in METADATA_TYPES else "str"


def metadata_text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def cast_metadata(value: str, v_type: str) -> Any:
    """ClearML's cast: the value as its type when possible, else the string."""
    try:
        if v_type == "int":
            return int(value)
        if v_type == "float":
            return float(value)
        if v_type == "bool":
            low = value.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off", ""):
                return False
            return value
        if v_type in ("list", "tuple", "dict"):
            try:
                parsed = json.loads(value)
            except ValueError:
                import ast

                parsed = ast.literal_eval(value)
            return tuple(parsed) if v_type == "tuple" else parsed
    except (ValueError, SyntaxError, TypeError):
        return value
    return value


def set_metadata(catalog: SqlCatalog, model_id: str, entries: Mapping[str, tuple[str, str]],
                 replace: bool) -> None:
    """Write ``{key: (value_text, type)}``; with ``replace`` every other key is dropped."""
    for key in entries:
        if not isinstance(key, str) or not key or len(key) > 255:
            raise ValueError(f"metadata keys must be non-empty strings of <= 255 characters: {key!r}")
    with catalog.write() as conn:
        _require(conn, model_id)
        if replace:
            conn.execute(delete(s.model_metadata).where(s.model_metadata.c.model_id == model_id))
        elif entries:
            conn.execute(delete(s.model_metadata).where(
                s.model_metadata.c.model_id == model_id, s.model_metadata.c.key.in_(list(entries))))
        if entries:
            conn.execute(s.model_metadata.insert(), [
                {"model_id": model_id, "key": k, "value": v, "type": t}
                for k, (v, t) in entries.items()])
        conn.execute(update(s.models).where(s.models.c.id == model_id).values(updated=now()))
        events.emit(conn, "metadata_changed", model_id=model_id, keys=sorted(entries))


def get_metadata(catalog: SqlCatalog, model_id: str) -> dict[str, dict[str, str]]:
    """``{key: {"key", "value", "type"}}`` (ClearML's shape)."""
    with catalog.read() as conn:
        rows = conn.execute(select(s.model_metadata.c.key, s.model_metadata.c.value,
                                   s.model_metadata.c.type)
                            .where(s.model_metadata.c.model_id == model_id)
                            .order_by(s.model_metadata.c.key)).all()
    return {k: {"key": k, "value": v, "type": t} for k, v, t in rows}


# -- tag filters ---------------------------------------------------------------------------------

OPERATORS = {"__$and": "and", "__$all": "and", "__$or": "or", "__$any": "or"}
NOT = "__$not"


@dataclass
class TagGroup:
    op: str  # "and" | "or"
    explicit: bool  # opened by an operator (else: the leading default group)
    terms: list[tuple[str | None, bool]]  # (tag or None for "no tags", include)


def parse_tag_filter(tags: Sequence[Any]) -> tuple[str, list[TagGroup]]:
    """Parse ClearML's tag filter list into (global operator, groups).

    Follows the ClearML docs (model_sdk "Tag Filters"): OR by default; ``__$and``/``__$all``
    and ``__$or``/``__$any`` apply to the tags that follow until the next operator; ``__$not``
    and a ``-`` prefix negate one tag; the groups are joined with AND when the list starts with
    ``__$and``/``__$all``, else with OR. In the leading group (before any operator) excluded
    tags must all be absent (``["__$not", "a", "b", "__$not", "c"]`` is ``¬a ∧ b ∧ ¬c``).
    """
    if isinstance(tags, str):
        tags = [tags]
    groups: list[TagGroup] = [TagGroup("or", False, [])]
    first = tags[0] if len(tags) else None
    global_op = OPERATORS.get(first, "or") if isinstance(first, str) else "or"
    negate = False
    for item in tags:
        if item is None:
            groups[-1].terms.append((None, not negate))
            negate = False
            continue
        if not isinstance(item, str):
            raise ValueError(f"tag filters must be strings, got {item!r}")
        if item.startswith("__$"):
            if negate:
                raise ValueError(f"a tag is expected after {NOT!r}, got {item!r}")
            if item == NOT:
                negate = True
                continue
            if item == "__$nop":
                groups.append(TagGroup("or", False, []))
                continue
            op = OPERATORS.get(item)
            if op is None:
                raise ValueError(f"unsupported tag filter operator {item!r}; supported: "
                                 + ", ".join([*OPERATORS, NOT]))
            groups.append(TagGroup(op, True, []))
            continue
        include = not negate
        if not negate and item.startswith("-"):
            item, include = item[1:], False
            if not item:
                raise ValueError("a tag is expected after the '-' prefix")
        groups[-1].terms.append((item, include))
        negate = False
    if negate:
        raise ValueError(f"a tag is expected after {NOT!r}")
    return global_op, [g for g in groups if g.terms]


def _has_tag(tag: str | None):
    if tag is None:  # ClearML: None matches models without tags
        return not_(exists().where(s.model_tags.c.model_id == s.models.c.id))
    return s.models.c.id.in_(select(s.model_tags.c.model_id).where(s.model_tags.c.tag == tag))


def _term(tag: str | None, include: bool):
    cond = _has_tag(tag)
    return cond if include else not_(cond)


def _ids_with_any(tags: list[str]):
    return select(s.model_tags.c.model_id).where(
        s.model_tags.c.tag == tags[0] if len(tags) == 1 else s.model_tags.c.tag.in_(tags))


def _group_clause(g: TagGroup):
    if not g.explicit:
        pos = [_term(t, True) for t, inc in g.terms if inc]
        neg = [_term(t, False) for t, inc in g.terms if not inc]
        parts = ([or_(*pos)] if len(pos) > 1 else pos) + neg
        return and_(*parts) if len(parts) > 1 else parts[0]
    terms = [_term(t, inc) for t, inc in g.terms]
    return (and_ if g.op == "and" else or_)(*terms) if len(terms) > 1 else terms[0]


def tag_filter(tags: Sequence[Any]) -> tuple[list, list]:
    """A ClearML tag filter as (id selects every match is in, residual SQL conditions).

    Required tag sets are returned as id selects so the query can intersect them with the
    metadata matches and look up only those models: over 100k models this is several times
    faster in SQLite than testing every row against each condition.
    """
    global_op, groups = parse_tag_filter(tags)
    if not groups:
        return [], []
    if len(groups) > 1 and global_op == "or":
        return [], [or_(*[_group_clause(g) for g in groups])]
    required, residual = [], []
    for g in groups:
        has_none = any(t is None for t, _inc in g.terms)
        pos = [t for t, inc in g.terms if inc and t is not None]
        neg = [t for t, inc in g.terms if not inc]
        if has_none or (g.explicit and g.op == "or" and neg):
            residual.append(_group_clause(g))
        elif g.explicit and g.op == "and":
            required += [_ids_with_any([t]) for t in pos]
            residual += [_term(t, False) for t in neg]
        else:  # the leading group, or an OR group without negations
            if pos:
                required.append(_ids_with_any(pos))
            residual += [_term(t, False) for t in neg]
    return required, residual


def tag_filter_clause(tags: Sequence[Any]):
    """The whole tag filter as one SQL condition (None when it filters nothing)."""
    required, residual = tag_filter(tags)
    parts = [s.models.c.id.in_(q) for q in required] + residual
    if not parts:
        return None
    return and_(*parts) if len(parts) > 1 else parts[0]


# -- query --------------------------------------------------------------------------------------

ORDER_FIELDS = {"updated": s.models.c.updated, "created": s.models.c.created,
                "name": s.models.c.name, "iteration": s.models.c.iteration}


def _count(value: Any, what: str) -> int:
    """A row count or offset the database can take: an int from 0 to 2**63 - 1."""
    import operator

    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an int, got {value!r}") from None
    if not 0 <= value <= 2**63 - 1:
        raise ValueError(f"{what} must be between 0 and 2**63 - 1 (64 bits), got {value}")
    return value


def query(catalog: SqlCatalog, *, project_name: str | None = None, model_name: str | None = None,
          tags: Sequence[Any] | None = None, only_published: bool = False,
          include_archived: bool = False, max_results: int | None = None,
          metadata: Mapping[str, Any] | None = None, framework: str | None = None,
          task_id: str | None = None, order_by: str = "-updated",
          offset: int = 0, ids_only: bool = False) -> list[dict]:
    """Rows of the models that match, newest update first by default (``ids_only``: rows with
    just ``id``, which is all a ``Model`` object needs: no wide rows read)."""
    m = s.models
    where = []
    q = select(m.c.id) if ids_only else _model_select()
    project_id = None
    if project_name is not None:
        project_id = (select(s.projects.c.id).where(s.projects.c.name == project_name)
                      .scalar_subquery())
    if only_published:
        where.append(m.c.published == true())
    if not include_archived:
        where.append(m.c.archived == false())
    if framework is not None:
        where.append(m.c.framework == framework)
    if task_id is not None:
        where.append(m.c.task_id == task_id)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict of key -> value, got {metadata!r}")
    required = []
    if tags:
        required, residual = tag_filter(tags)
        where += residual
    for key, value in (metadata or {}).items():
        if isinstance(value, dict) and "value" in value:  # ClearML's {"value": .., "type": ..}
            value = value["value"]
        required.append(select(s.model_metadata.c.model_id).where(
            s.model_metadata.c.key == str(key),
            s.model_metadata.c.value == metadata_text(value)))
    if required:  # one id set for every required filter: the database looks up only those
        where.append(m.c.id.in_(required[0] if len(required) == 1 else intersect(*required)))
    # with an id set, keep SQLite from driving the query from the (less selective) project
    # or name index instead: coalesce() hides the column from the planner
    if project_id is not None:
        where.append((func.coalesce(m.c.project_id, "") if required else m.c.project_id)
                     == project_id)
    if model_name is not None:
        where.append(m.c.name == model_name)
    if where:
        q = q.where(and_(*where))
    desc = order_by.startswith("-")
    field = order_by.lstrip("-+")
    column = ORDER_FIELDS.get(field)
    if column is None:
        raise ValueError(f"cannot order models by {order_by!r}; use one of "
                         + ", ".join(sorted(ORDER_FIELDS)) + " (prefix '-' for descending)")
    q = q.order_by(column.desc() if desc else column.asc(), m.c.id.desc() if desc else m.c.id)
    if max_results is not None:
        q = q.limit(_count(max_results, "max_results"))
    if offset:
        q = q.offset(_count(offset, "offset"))
    with catalog.read() as conn:
        result = conn.execute(q)
        keys = list(result.keys())
        return [dict(zip(keys, row, strict=True)) for row in result]


# -- creating models ----------------------------------------------------------------------------

def create_model(catalog: SqlCatalog, *, name: str, project: str | None = None,
                 project_id: str | None = None, task_id: str | None = None,
                 origin: str = "manual", framework: str | None = None, uri: str | None = None,
                 comment: str = "", tags: Sequence[str] = (), labels: Mapping[str, int] | None = None,
                 config_text: str | None = None, config_dict: Mapping | None = None,
                 is_package: bool = False, published: bool = False, ready: bool = False,
                 parent_id: str | None = None, link_name: str | None = None,
                 link_direction: str | None = None) -> str:
    """Insert a model (with its tags, and a task link if asked) in one transaction."""
    tags = clean_tags(tags)
    with catalog.write() as conn:
        if project is not None:
            project_id = catalog.ensure_project(conn, project)
        system_tags = [PACKAGE_TAG] if is_package else []
        model_id = catalog.insert_model(
            conn, name=name, project_id=project_id, task_id=task_id, origin=origin,
            framework=framework, uri=uri, comment=comment or "", tags=json.dumps(tags),
            system_tags=json.dumps(system_tags), labels=json.dumps(dict(labels or {})),
            config_text=config_text,
            config_dict=json.dumps(config_dict) if config_dict is not None else None,
            is_package=is_package, published=published, ready=ready, parent_id=parent_id)
        if tags:
            conn.execute(s.model_tags.insert(), [{"model_id": model_id, "tag": t} for t in tags])
        if link_direction and task_id is not None:
            conn.execute(s.task_models.insert().values(
                task_id=task_id, model_id=model_id, direction=link_direction, name=link_name,
                created=now()))
        events.emit(conn, "registered", model_id=model_id, origin=origin)
    return model_id


def find_by_uri(catalog: SqlCatalog, uri: str, include_archived: bool = False) -> str | None:
    """The newest model registered at this URL."""
    q = select(s.models.c.id).where(s.models.c.uri == uri)
    if not include_archived:
        q = q.where(s.models.c.archived == false())
    with catalog.read() as conn:
        return conn.execute(q.order_by(s.models.c.created.desc()).limit(1)).scalar()


def task_inputs(catalog: SqlCatalog, task_id: str) -> list[tuple[str, str | None]]:
    """(model id, link name) of a task's input models, oldest first."""
    with catalog.read() as conn:
        return [(r[0], r[1]) for r in conn.execute(
            select(s.task_models.c.model_id, s.task_models.c.name).where(
                s.task_models.c.task_id == task_id, s.task_models.c.direction == "input")
            .order_by(s.task_models.c.created))]


def register_uri(catalog: SqlCatalog, model_id: str, uri: str, *, iteration: int | None,
                 framework: str | None, comment: str | None, is_package: bool) -> None:
    """Point a model at weights that are already stored elsewhere (nothing is uploaded)."""
    with catalog.write() as conn:
        row = _require(conn, model_id)
        if row["published"]:
            raise ModelPublished(f"model {model_id} is published: its weights cannot be updated")
        values: dict[str, Any] = {"uri": uri, "ready": True, "latest_snapshot_id": None,
                                  "iteration": iteration, "updated": now()}
        if framework:
            values["framework"] = framework
        if comment is not None:
            values["comment"] = comment
        conn.execute(update(s.models).where(s.models.c.id == model_id).values(**values))
        set_package(conn, model_id, is_package)
        # new weights: a version for watchers and serve, with no stored bytes (no version number)
        events.emit(conn, "version_ready", model_id=model_id, uri=uri, registered_uri=True)


# -- removing -----------------------------------------------------------------------------------

def users_of(catalog: SqlCatalog, model_id: str) -> list[str]:
    """Tasks other than the creator that use the model (as input, or as a connected output)."""
    with catalog.read() as conn:
        row = _require(conn, model_id)
        q = select(s.task_models.c.task_id).where(s.task_models.c.model_id == model_id)
        if row["task_id"]:
            q = q.where(s.task_models.c.task_id != row["task_id"])
        return sorted({r[0] for r in conn.execute(q)})


def remove(catalog: SqlCatalog, model_id: str) -> tuple[dict, set[str]]:
    """Delete a model and its snapshots; returns (row, blob shas no other snapshot uses).

    The caller deletes those blobs after the commit, so a failed delete leaves the catalog whole.
    """
    with catalog.write() as conn:
        row = _require(conn, model_id)
        events.emit(conn, "removed", model_id=model_id)
        snap_ids = [r[0] for r in conn.execute(select(s.snapshots.c.id).where(
            s.snapshots.c.model_id == model_id))]
        shas: set[str] = set()
        if snap_ids:
            shas = {r[0] for r in conn.execute(select(s.snapshot_files.c.sha256).where(
                s.snapshot_files.c.snapshot_id.in_(snap_ids),
                s.snapshot_files.c.sha256.isnot(None)))}
        # children first: not every database enforces ON DELETE CASCADE (SQLite needs a pragma)
        if snap_ids:
            conn.execute(delete(s.snapshot_files).where(
                s.snapshot_files.c.snapshot_id.in_(snap_ids)))
            conn.execute(delete(s.snapshots).where(s.snapshots.c.model_id == model_id))
        conn.execute(delete(s.model_tags).where(s.model_tags.c.model_id == model_id))
        conn.execute(delete(s.model_metadata).where(s.model_metadata.c.model_id == model_id))
        conn.execute(delete(s.task_models).where(s.task_models.c.model_id == model_id))
        conn.execute(update(s.models).where(s.models.c.parent_id == model_id).values(parent_id=None))
        conn.execute(delete(s.models).where(s.models.c.id == model_id))
        orphans = set()
        for sha in shas:
            still_used = conn.execute(select(s.snapshot_files.c.snapshot_id).where(
                s.snapshot_files.c.sha256 == sha).limit(1)).first()
            if still_used is None:
                orphans.add(sha)
        return row, orphans


def local_path_of(uri: str | None) -> str | None:
    """A filesystem path for a ``file://`` URL or a plain path; None for remote URLs."""
    if not uri:
        return None
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" not in uri:
        return uri
    return None


def is_local(uri: str | None) -> bool:
    path = local_path_of(uri)
    return path is not None and os.path.isabs(path)
