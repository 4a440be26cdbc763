"""Schema migrations: new catalogs at head, older ones upgraded once, newer ones refused."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from clearml_hooks.store import migrations
from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import CatalogError, SqlCatalog
from tests.conftest import REPO

FIXTURE = Path(__file__).parent / "fixtures" / "pre_alembic_store"
CLASSIFIER = "2489dd351f114778ae8bdbb7a2aca4e2"
REGRESSOR = "b83eec592c324dd69c0174126ae389ec"


@pytest.fixture
def old_store(tmp_path, monkeypatch) -> Path:
    """A copy of a store written by the release before migrations, as the default store."""
    home = tmp_path / "old-store"
    shutil.copytree(FIXTURE, home)
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(home))
    return home


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty PostgreSQL database."""
    import psycopg

    name = "m" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.url.rsplit("/", 1)[0] + "/" + name


def _revisions(url: str) -> list[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def test_head_is_the_newest_revision():
    from alembic.script import ScriptDirectory

    from clearml_hooks.store.migrations import upgrade

    assert ScriptDirectory.from_config(upgrade.config()).get_heads() == [migrations.HEAD]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migrations_make_the_schema_of_schema_py(dialect, tmp_path, request):
    """Upgrading from nothing with Alembic gives what a new catalog gets from schema.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from clearml_hooks.store.migrations import upgrade

    url = (f"sqlite:///{tmp_path / 'catalog.db'}" if dialect == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            upgrade.upgrade(conn)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), s.metadata)
            triggers = _triggers(conn, dialect)
    finally:
        engine.dispose()
    assert diff == []
    assert _revisions(url) == [migrations.HEAD]
    new = SqlCatalog(url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'new.db'}")
    with new.engine.connect() as conn:
        assert _triggers(conn, dialect) == triggers  # the same triggers both ways
    new.close()


def _triggers(conn, dialect: str) -> list[str]:
    sql = ("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
           if dialect == "sqlite" else
           "SELECT DISTINCT trigger_name FROM information_schema.triggers ORDER BY 1")
    return [r[0] for r in conn.execute(text(sql))]


def test_a_new_catalog_is_created_at_head_without_alembic(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from clearml_hooks.store.catalog import SqlCatalog
        SqlCatalog("sqlite:///{tmp_path / 'catalog.db'}").close()
        SqlCatalog("sqlite:///{tmp_path / 'catalog.db'}").close()
        print("alembic" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
    assert _revisions(f"sqlite:///{tmp_path / 'catalog.db'}") == [migrations.HEAD]


def test_a_store_from_before_migrations_is_upgraded_and_still_readable(old_store, tmp_path):
    from clearml_hooks import Model, Task

    assert not sqlite3.connect(old_store / "catalog.db").execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchall()
    classifier = Model(CLASSIFIER)
    assert _revisions(f"sqlite:///{old_store / 'catalog.db'}") == [migrations.HEAD]
    assert classifier.name == "classifier" and classifier.project == "fixture"
    assert sorted(classifier.tags) == ["best", "v1"]
    assert classifier.get_metadata("dataset") == "mnist"
    assert classifier.get_metadata_casted("accuracy") == 0.91
    assert [(x["version"], x["iteration"], x["state"]) for x in classifier.snapshots] == [
        (1, 1, "ready"), (2, 2, "ready")]
    assert Path(classifier.get_local_copy()).read_bytes() == b"second weights, longer\n"
    assert classifier.get_reported_scalars()["loss"]["train"]["y"] == [1.0, 0.5, 1 / 3]
    assert classifier.get_reported_single_value("mAP") == 0.75
    assert classifier.get_last_scalar_metrics()["loss"]["train"]["last"] == 1 / 3
    assert [p["metric"] for p in classifier.get_reported_plots()] == ["hist"]
    regressor = Model(REGRESSOR)
    assert Path(regressor.get_local_copy()).read_bytes() == b"regressor bytes\n"
    names = {m.name for m in Model.query_models(project_name="fixture")}
    assert names == {"classifier", "regressor"}

    # writes work on the upgraded catalog, through the triggers it already had
    classifier.report_scalar("loss", "train", 0.25, 3)
    assert classifier.get_last_scalar_metrics()["loss"]["train"]["last"] == 0.25
    classifier.add_tags(["upgraded"])
    assert "upgraded" in Model(CLASSIFIER).tags
    task = Task.init(project_name="fixture", task_name="after", output_uri=str(old_store))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"new bytes")
    from clearml_hooks import OutputModel

    out = OutputModel(task=task, name="new")
    out.update_weights(weights_filename=str(weights))
    task.close()
    assert Path(Model(out.id).get_local_copy()).read_bytes() == b"new bytes"


_OPEN = """
import sys
from clearml_hooks.store.catalog import SqlCatalog
SqlCatalog(sys.argv[1]).close()
"""


def _open_at_once(url: str, n: int = 4) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN, url], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


def test_processes_opening_an_old_store_at_once_migrate_it_once(old_store):
    url = f"sqlite:///{old_store / 'catalog.db'}"
    _open_at_once(url)
    assert _revisions(url) == [migrations.HEAD]


def test_processes_opening_a_new_store_at_once_create_it_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'catalog.db'}"
    _open_at_once(url)
    assert _revisions(url) == [migrations.HEAD]


def _old_postgres_catalog(url: str) -> None:
    """What the release before migrations made on PostgreSQL: create_all and an info row."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        s.metadata.create_all(conn)
        conn.execute(s.info.insert().values(key="schema", value="1"))
        conn.execute(s.projects.insert().values(id="p1", name="old", created=1.0))
        conn.execute(s.tasks.insert().values(id="t1", project_id="p1", name="train",
                                             task_type="training", status="completed",
                                             tags="[]", comment="", labels="{}", host="",
                                             created=1.0, updated=1.0))
        conn.execute(s.models.insert().values(
            id="m1", project_id="p1", task_id="t1", name="net", origin="manual", comment="",
            tags='["a"]', system_tags="[]", labels="{}", is_package=False, published=False,
            archived=False, ready=True, created=1.0, updated=1.0))
        conn.execute(s.model_scalars.insert().values(model_id="m1", title="loss", series="train",
                                                     iteration=0, value=0.5, created=1.0))
    engine.dispose()


def test_an_old_postgres_catalog_is_upgraded_once(pg_url):
    _old_postgres_catalog(pg_url)
    _open_at_once(pg_url)
    assert _revisions(pg_url) == [migrations.HEAD]
    catalog = SqlCatalog(pg_url)
    try:
        assert catalog.get_model("m1")["name"] == "net"
        assert catalog.get_task("t1")["project"] == "old"
        with catalog.read() as conn:
            last = conn.execute(text("SELECT value FROM model_metric_last")).scalar()
        assert last == 0.5
        catalog.create_task("t2", "old", "evaluate", "testing")
        assert [t["id"] for t in catalog.list_tasks(project="old")] == ["t2", "t1"]
    finally:
        catalog.close()


def test_a_new_postgres_catalog_is_created_once(pg_url):
    _open_at_once(pg_url)
    assert _revisions(pg_url) == [migrations.HEAD]


def test_a_catalog_newer_than_the_code_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    SqlCatalog(url).close()
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    with pytest.raises(CatalogError, match="newer than this clearml-hooks.*upgrade clearml-hooks"):
        SqlCatalog(url)


FOREIGN = {
    # an application with its own "models" table (Django, a feature store, ...)
    "a models table": ["CREATE TABLE models (id INTEGER PRIMARY KEY, title TEXT)",
                       "INSERT INTO models VALUES (1, 'theirs')"],
    # MLflow's tracking database: its own Alembic history
    "MLflow's database": ["CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
                          "INSERT INTO alembic_version VALUES ('0584bdc529eb')",
                          "CREATE TABLE experiments (id INTEGER PRIMARY KEY, name TEXT)",
                          "INSERT INTO experiments VALUES (1, 'theirs')"],
    # any table named like one of ours
    "a tasks table": ["CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)",
                      "INSERT INTO tasks VALUES (1, 'theirs')"],
}


def _dump(url: str) -> dict[str, list]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        from sqlalchemy import inspect

        with engine.connect() as conn:
            return {t: sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{t}"'))))
                    for t in sorted(inspect(conn).get_table_names())}
    finally:
        engine.dispose()


def _make_foreign(url: str, statements: list[str]) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


@pytest.mark.parametrize("what", list(FOREIGN))
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_another_applications_database_is_refused_untouched(what, dialect, tmp_path, request):
    """Pointed at a database that holds another application's tables where ours would go,
    the catalog says so (and what to do) instead of migrating or mixing into them."""
    url = (f"sqlite:///{tmp_path / 'theirs.db'}" if dialect == "sqlite"
           else request.getfixturevalue("pg_url"))
    _make_foreign(url, FOREIGN[what])
    before = _dump(url)
    with pytest.raises(CatalogError, match="not a clearml-hooks catalog.*another application"
                                           ".*nothing in it was changed.*catalog_url"):
        SqlCatalog(url)
    assert _dump(url) == before


def test_a_catalog_beside_unrelated_tables_is_created(tmp_path):
    """A database shared with unrelated tables (no name in common) gets the catalog beside
    them, and theirs are left as they were."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _make_foreign(url, ["CREATE TABLE customers (id INTEGER PRIMARY KEY)",
                        "INSERT INTO customers VALUES (7)"])
    SqlCatalog(url).close()
    dump = _dump(url)
    assert dump["customers"] == [(7,)] and dump["alembic_version"] == [(migrations.HEAD,)]
