"""The catalog's schema revision: create a new catalog at head, upgrade an older one.

Why two paths: opening an up-to-date catalog (every ``Task.init``, every CLI call) must cost one
query and never import Alembic; only a catalog that needs upgrading loads Alembic
(``clearml_hooks.store.migrations.upgrade``). Schema changes are Alembic revisions in
``versions/``: change ``schema.py``, add a revision that makes the same change, move ``HEAD``.
A new revision file can be started with ``alembic.command.revision(upgrade.config(), "msg")``.
"""

from __future__ import annotations

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from clearml_hooks.store import schema as s

HEAD = "0001_baseline"  # the newest revision in versions/ (tests/test_migrations.py checks it)

# Alembic's own version table, as Alembic creates it (so a catalog made here is one it knows)
_version_table = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)

# one PostgreSQL advisory lock key: two processes never migrate the same catalog at once
PG_LOCK_KEY = 0x636C6D67  # "clmg"


class SchemaTooNew(RuntimeError):
    """The catalog was migrated by a newer clearml-hooks than this one."""


class NotOurDatabase(RuntimeError):
    """The database holds another application's tables where the catalog's would go."""


def _is_ours(conn: Connection, tables: set[str]) -> bool:
    """Every clearml-hooks catalog, before migrations and since, has ``info`` with a
    ``schema`` row; another application's ``info`` or ``models`` table does not."""
    if "info" not in tables:
        return False
    columns = {c["name"] for c in inspect(conn).get_columns("info")}
    if not {"key", "value"} <= columns:
        return False
    with conn.begin_nested():
        return conn.execute(select(s.info.c.value).where(s.info.c.key == "schema")).first() \
            is not None


def _refuse_foreign(url: str, tables: set[str], revision: str | None) -> NotOurDatabase:
    found = ", ".join(sorted(tables)[:8]) + (", ..." if len(tables) > 8 else "")
    alembic = f", Alembic revision {revision}" if revision else ""
    return NotOurDatabase(
        f"the database at {url} is not a clearml-hooks catalog: it holds another application's "
        f"tables ({found}{alembic}); nothing in it was changed. Give clearml-hooks a database "
        "(or PostgreSQL schema) of its own: the catalog_url setting (CLEARML_HOOKS_CATALOG_URL)")


def current_revision(conn: Connection) -> str | None:
    """The catalog's revision, or None when it has no version table (new, or from before
    migrations). One query; on a missing table the caller's transaction is spoiled."""
    try:
        return conn.execute(select(_version_table.c.version_num)).scalar()
    except DBAPIError:
        return None


def is_current(catalog) -> bool:
    """The cheap check made on every open: is the catalog at ``HEAD``?"""
    with catalog.read() as conn:
        return current_revision(conn) == HEAD


def ensure_schema(catalog) -> None:
    """Bring the catalog to ``HEAD``: nothing to do, create it, or upgrade it with Alembic.

    Runs in one write transaction that holds the catalog's write lock (SQLite's ``BEGIN
    IMMEDIATE``; an advisory lock on PostgreSQL), so of two processes opening the same new or
    old catalog at once one migrates and the other then finds it at head."""
    if is_current(catalog):
        return
    with catalog.write() as conn:
        if not catalog.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" in tables:
            with conn.begin_nested():  # a failed read must not spoil the transaction
                revision = current_revision(conn)
            if revision == HEAD:
                return  # another process got here first
            if not _is_ours(conn, tables):  # e.g. MLflow's database: its own Alembic history
                raise _refuse_foreign(_shown_url(catalog), tables, revision)
        elif not tables & {"info", "models", *s.metadata.tables}:
            _create_at_head(conn)  # a new catalog, alone or beside unrelated tables
            return
        elif not _is_ours(conn, tables):
            raise _refuse_foreign(_shown_url(catalog), tables, None)
        from clearml_hooks.store.migrations import upgrade

        upgrade.upgrade(conn, catalog.url)


def _shown_url(catalog) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(catalog.url).render_as_string(hide_password=True)
    except Exception:
        return "the configured catalog_url"


def _create_at_head(conn: Connection) -> None:
    """A brand-new catalog: today's tables straight from ``schema.py``, stamped ``HEAD``
    (what Alembic's upgrade from nothing would make; tests compare the two)."""
    s.metadata.create_all(conn)
    _version_table.create(conn)
    conn.execute(_version_table.insert().values(version_num=HEAD))
    conn.execute(s.info.insert().values(key="schema", value=str(s.SCHEMA_VERSION)))
