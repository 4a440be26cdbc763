"""Baseline: the catalog as the last release before migrations made it.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-30

A frozen copy of schema.py at that release (tables, indexes, triggers), so later changes to
schema.py never change what this revision creates. Its upgrade creates only what is missing:
a new catalog gets everything; a catalog written before migrations (no alembic_version) gets
the tables and indexes an older release lacked, then is stamped.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    inspect,
    select,
)

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

metadata = MetaData()

info = Table(
    "info",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(512), nullable=False, unique=True),
    Column("created", Float, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("project_id", String(32), ForeignKey("projects.id"), nullable=False),
    Column("name", String(512), nullable=False),
    Column("task_type", String(64), nullable=False, default="training"),
    Column("status", String(32), nullable=False, default="in_progress"),
    Column("tags", Text, nullable=False, default="[]"),
    Column("comment", Text, nullable=False, default=""),
    Column("labels", Text, nullable=False, default="{}"),
    Column("last_iteration", Integer, nullable=True),
    Column("host", String(255), nullable=False, default=""),
    Column("pid", Integer, nullable=True),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Index("ix_tasks_project_name", "project_id", "name"),
)

models = Table(
    "models",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("project_id", String(32), ForeignKey("projects.id"), nullable=True),
    Column("task_id", String(32), ForeignKey("tasks.id"), nullable=True),
    Column("name", String(512), nullable=False),
    # the saved path an auto-captured model is keyed by: one model per (task, path)
    Column("source", Text, nullable=True),
    Column("origin", String(16), nullable=False, default="captured"),
    Column("framework", String(64), nullable=True),
    Column("uri", Text, nullable=True),
    Column("comment", Text, nullable=False, default=""),
    Column("tags", Text, nullable=False, default="[]"),
    Column("system_tags", Text, nullable=False, default="[]"),
    Column("labels", Text, nullable=False, default="{}"),
    Column("config_text", Text, nullable=True),
    Column("config_dict", Text, nullable=True),
    Column("is_package", Boolean, nullable=False, default=False),
    Column("published", Boolean, nullable=False, default=False),
    Column("archived", Boolean, nullable=False, default=False),
    Column("ready", Boolean, nullable=False, default=False),
    Column("iteration", Integer, nullable=True),
    Column("latest_snapshot_id", String(32), nullable=True),
    Column("parent_id", String(32), nullable=True),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    UniqueConstraint("task_id", "source", name="uq_models_task_source"),
    Index("ix_models_updated", "updated"),
    Index("ix_models_project_name", "project_id", "name"),
    Index("ix_models_uri", "uri"),
    Index("ix_models_name", "name"),
)

model_tags = Table(
    "model_tags",
    metadata,
    Column("model_id", String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(255), primary_key=True),
    Index("ix_model_tags_tag", "tag", "model_id"),
)

model_metadata = Table(
    "model_metadata",
    metadata,
    Column("model_id", String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
    Column("type", String(32), nullable=False, default="str"),
    Index("ix_model_metadata_kv", "key", "value", "model_id"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("model_id", String(32), ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("iteration", Integer, nullable=True),
    Column("state", String(16), nullable=False, default="pending"),
    Column("kind", String(8), nullable=False, default="file"),
    Column("source_path", Text, nullable=True),
    Column("source_size", BigInteger, nullable=True),
    Column("source_mtime_ns", BigInteger, nullable=True),
    Column("staging", Text, nullable=True),
    Column("owner", String(255), nullable=True),
    Column("digest", String(64), nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("created", Float, nullable=False),
    Column("completed", Float, nullable=True),
    UniqueConstraint("model_id", "version", name="uq_snapshots_model_version"),
    Index("ix_snapshots_state", "state"),
    Index("ix_snapshots_digest", "digest"),
    Index("ix_snapshots_source", "source_path"),
)

snapshot_files = Table(
    "snapshot_files",
    metadata,
    Column("snapshot_id", String(32), ForeignKey("snapshots.id", ondelete="CASCADE"),
           primary_key=True),
    Column("relpath", Text, primary_key=True),
    Column("sha256", String(64), nullable=True),
    Column("size", BigInteger, nullable=False),
    Index("ix_snapshot_files_sha", "sha256"),
)

# a blob that a snapshot being stored relies on (dedup): garbage collection keeps it
blob_pins = Table(
    "blob_pins",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("snapshot_id", String(32), primary_key=True),
    Column("created", Float, nullable=False),
    Index("ix_blob_pins_snapshot", "snapshot_id"),
)

task_models = Table(
    "task_models",
    metadata,
    Column("task_id", String(32), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("model_id", String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("direction", String(8), primary_key=True),
    Column("name", String(512), nullable=True),
    Column("snapshot_id", String(32), nullable=True),
    Column("created", Float, nullable=False),
    Index("ix_task_models_model", "model_id"),
    Index("ix_task_models_task_direction", "task_id", "direction"),
)

# -- metrics and plots reported on models (clearml_hooks/model_reporting.py) ----------------------
# One row per (model, title, series, iteration): reporting the same point again replaces it, as
# ClearML's event ids do. Single values are scalars titled "Summary" at iteration -2**31 (ClearML).

model_scalars = Table(
    "model_scalars",
    metadata,
    Column("model_id", String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("title", String(255), primary_key=True),
    Column("series", String(255), primary_key=True),
    Column("iteration", BigInteger, primary_key=True, autoincrement=False),
    Column("value", Float, nullable=True),  # NULL is NaN (SQLite stores no NaN)
    Column("created", Float, nullable=False),
)

model_plots = Table(
    "model_plots",
    metadata,
    Column("model_id", String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("title", String(255), primary_key=True),
    Column("series", String(255), primary_key=True),
    Column("iteration", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("data", Text, nullable=False),  # the plot's plain data, JSON
    Column("created", Float, nullable=False),
)

# The last value of every scalar series of a model, kept by database triggers on model_scalars
# (so a report is still one statement from the client). Why: the model table sorts and filters
# 100k models by a metric's last value; an index on (title, series, value) lets it read one
# page in index order instead of computing the last value of every model. Created, triggers
# and back-fill included, when the table is created (new catalogs and older ones alike).
model_metric_last = Table(
    "model_metric_last",
    metadata,
    Column("model_id", String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("title", String(255), primary_key=True),
    Column("series", String(255), primary_key=True),
    Column("iteration", BigInteger, nullable=False),
    Column("value", Float, nullable=True),  # NULL is NaN
    Index("ix_model_metric_last_value", "title", "series", "value"),
)

_LAST_UPSERT = """INSERT INTO model_metric_last (model_id, title, series, iteration, value)
    VALUES (NEW.model_id, NEW.title, NEW.series, NEW.iteration, NEW.value)
    ON CONFLICT (model_id, title, series) DO UPDATE
    SET iteration = excluded.iteration, value = excluded.value
    WHERE excluded.iteration >= model_metric_last.iteration"""
_LAST_BACKFILL = """INSERT INTO model_metric_last (model_id, title, series, iteration, value)
    SELECT s.model_id, s.title, s.series, s.iteration, s.value FROM model_scalars s
    WHERE s.iteration = (SELECT max(t.iteration) FROM model_scalars t WHERE
        t.model_id = s.model_id AND t.title = s.title AND t.series = s.series)"""
for _ddl in (
        f"CREATE TRIGGER model_scalars_last_insert AFTER INSERT ON model_scalars "
        f"BEGIN {_LAST_UPSERT}; END",
        f"CREATE TRIGGER model_scalars_last_update AFTER UPDATE ON model_scalars "
        f"BEGIN {_LAST_UPSERT}; END"):
    event.listen(model_metric_last, "after_create", DDL(_ddl).execute_if(dialect="sqlite"))
for _ddl in (
        "CREATE FUNCTION model_scalars_last() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"{_LAST_UPSERT}; RETURN NULL; END $$",
        "CREATE TRIGGER model_scalars_last AFTER INSERT OR UPDATE ON model_scalars "
        "FOR EACH ROW EXECUTE FUNCTION model_scalars_last()"):
    event.listen(model_metric_last, "after_create", DDL(_ddl).execute_if(dialect="postgresql"))
event.listen(model_metric_last, "after_create", DDL(_LAST_BACKFILL))

# Scalar points rolled up in buckets of BUCKET_WIDTH iterations (sum, count), kept by triggers
# like model_metric_last. Why: a chart of 10 series x 10,000 points then reads ~1,600 bucket
# rows instead of 100,000 points (the model page; the SDK's readers use the points).
BUCKET_WIDTH = 64
model_scalar_buckets = Table(
    "model_scalar_buckets",
    metadata,
    Column("model_id", String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("title", String(255), primary_key=True),
    Column("series", String(255), primary_key=True),
    Column("bucket", BigInteger, primary_key=True, autoincrement=False),
    Column("first_iteration", BigInteger, nullable=False),
    Column("total", Float, nullable=False),  # sum of the finite values
    Column("n", Integer, nullable=False),  # how many values are not NaN
    Column("points", Integer, nullable=False),
)

_NOT_SINGLE = "NOT (NEW.title = 'Summary' AND NEW.iteration = -2147483648)"
_BUCKET_INSERT = f"""INSERT INTO model_scalar_buckets
    (model_id, title, series, bucket, first_iteration, total, n, points)
    SELECT NEW.model_id, NEW.title, NEW.series, NEW.iteration / {BUCKET_WIDTH}, NEW.iteration,
        coalesce(NEW.value, 0), CASE WHEN NEW.value IS NULL THEN 0 ELSE 1 END, 1 WHERE {_NOT_SINGLE}
    ON CONFLICT (model_id, title, series, bucket) DO UPDATE SET
        first_iteration = min(model_scalar_buckets.first_iteration, excluded.first_iteration),
        total = model_scalar_buckets.total + excluded.total,
        n = model_scalar_buckets.n + excluded.n, points = model_scalar_buckets.points + 1"""
_BUCKET_UPDATE = f"""UPDATE model_scalar_buckets SET
        total = total + coalesce(NEW.value, 0) - coalesce(OLD.value, 0),
        n = n + (CASE WHEN NEW.value IS NULL THEN 0 ELSE 1 END)
              - (CASE WHEN OLD.value IS NULL THEN 0 ELSE 1 END)
    WHERE model_id = NEW.model_id AND title = NEW.title AND series = NEW.series
        AND bucket = NEW.iteration / {BUCKET_WIDTH}"""
_BUCKET_BACKFILL = f"""INSERT INTO model_scalar_buckets
    (model_id, title, series, bucket, first_iteration, total, n, points)
    SELECT model_id, title, series, iteration / {BUCKET_WIDTH}, min(iteration),
        coalesce(sum(value), 0), count(value), count(*) FROM model_scalars
    WHERE NOT (title = 'Summary' AND iteration = -2147483648)
    GROUP BY model_id, title, series, iteration / {BUCKET_WIDTH}"""
event.listen(model_scalar_buckets, "after_create", DDL(
    f"CREATE TRIGGER model_scalars_bucket_insert AFTER INSERT ON model_scalars "
    f"BEGIN {_BUCKET_INSERT}; END").execute_if(dialect="sqlite"))
event.listen(model_scalar_buckets, "after_create", DDL(
    f"CREATE TRIGGER model_scalars_bucket_update AFTER UPDATE ON model_scalars "
    f"BEGIN {_BUCKET_UPDATE}; END").execute_if(dialect="sqlite"))
for _name, _body, _op in (("model_scalars_bucket_insert", _BUCKET_INSERT, "INSERT"),
                          ("model_scalars_bucket_update", _BUCKET_UPDATE, "UPDATE")):
    event.listen(model_scalar_buckets, "after_create", DDL(
        f"CREATE FUNCTION {_name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"{_body.replace('min(model_scalar_buckets', 'least(model_scalar_buckets')}; "
        f"RETURN NULL; END $$").execute_if(dialect="postgresql"))
    event.listen(model_scalar_buckets, "after_create", DDL(
        f"CREATE TRIGGER {_name} AFTER {_op} ON model_scalars FOR EACH ROW "
        f"EXECUTE FUNCTION {_name}()").execute_if(dialect="postgresql"))
event.listen(model_scalar_buckets, "after_create", DDL(_BUCKET_BACKFILL))

# -- registry events (clearml_hooks/store/events.py) ---------------------------------------------
# One row per registry change, appended in the change's own transaction; ids increase in commit
# order (writers are serialized: SQLite's write lock, an advisory lock on PostgreSQL).

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("model_id", String(32), nullable=True),
    Column("task_id", String(32), nullable=True),
    Column("data", Text, nullable=False, default="{}"),  # JSON: name, project, version, tags, ...
    Index("ix_events_model", "model_id"),
    sqlite_autoincrement=True,  # never reuse an id, even after old events are pruned
)

# a named consumer's position in the event log (clearml-hooks watch --consumer NAME)
event_consumers = Table(
    "event_consumers",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("cursor", BigInteger, nullable=False),
    Column("updated", Float, nullable=False),
)

# deliveries a consumer gave up on after its retries (webhooks)
event_dead_letters = Table(
    "event_dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("consumer", String(255), nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("target", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created", Float, nullable=False),
    Index("ix_event_dead_letters_consumer", "consumer", "id"),
)


def upgrade() -> None:
    """Create what is missing: tables (with their triggers and back-fill), then indexes of
    tables that already existed, then the ``info`` schema row older releases check."""
    bind = op.get_bind()
    metadata.create_all(bind, checkfirst=True)
    inspector = inspect(bind)
    for table in metadata.sorted_tables:
        have = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in have:
                index.create(bind, checkfirst=True)
    if bind.execute(select(info.c.value).where(info.c.key == "schema")).first() is None:
        bind.execute(info.insert().values(key="schema", value="1"))


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: there is no catalog before it")
