"""The catalog's tables (SQLAlchemy Core): one schema for SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
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
)

SCHEMA_VERSION = 1

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
