"""Run Alembic on a catalog that is older than this code (imported only then: Alembic is slow
to import and an up-to-date catalog never needs it)."""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from clearml_hooks.store.migrations import HEAD, SchemaTooNew, current_revision

SCRIPTS = os.path.dirname(os.path.abspath(__file__))


def config(conn: Connection | None = None) -> Config:
    """Alembic's configuration, made in code (no alembic.ini): the scripts ship in the package."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPTS)
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(conn: Connection, url: str = "", target: str = "head") -> None:
    """Upgrade the catalog on ``conn`` inside the caller's transaction (which holds the lock).
    A catalog without a version table (made before migrations) starts from the baseline, whose
    upgrade creates only what is missing."""
    cfg = config(conn)
    revision = current_revision(conn) if _has_version_table(conn) else None
    if revision is not None:
        try:
            ScriptDirectory.from_config(cfg).get_revision(revision)
        except CommandError:
            raise SchemaTooNew(
                f"the catalog{' at ' + url if url else ''} is at schema revision {revision}, "
                f"newer than this clearml-hooks knows (its newest is {HEAD}): "
                f"upgrade clearml-hooks") from None
    command.upgrade(cfg, target)


def _has_version_table(conn: Connection) -> bool:
    from sqlalchemy import inspect

    return inspect(conn).has_table("alembic_version")
