"""The model table's SQL (``store/model_table.py``) and the last-metric index behind it, on
SQLite and on a real PostgreSQL: the same filters, sorts and pages on both."""

from __future__ import annotations

import math
import uuid

import pytest
from sqlalchemy import select, text

from clearml_hooks.store import model_metrics, model_ops
from clearml_hooks.store import schema as s
from clearml_hooks.store.catalog import SqlCatalog
from clearml_hooks.store.model_metrics import add_scalar
from clearml_hooks.store.model_table import (
    TableError,
    TableQuery,
    page,
    parse_column,
    parse_condition,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request, tmp_path):
    if request.param == "sqlite":
        cat = SqlCatalog(f"sqlite:///{tmp_path}/catalog.db")
        yield cat
        cat.close()
        return
    import psycopg

    pg = request.getfixturevalue("pg_server")
    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    cat = SqlCatalog(pg.url.rsplit("/", 1)[0] + "/" + name)
    yield cat
    cat.close()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name}")


def make(catalog, name, *, loss=None, lr=None, dataset=None, tags=(), project="p"):
    mid = model_ops.create_model(catalog, name=name, project=project, tags=list(tags))
    entries = {}
    if lr is not None:
        entries["lr"] = (str(lr), "float")
    if dataset is not None:
        entries["dataset"] = (dataset, "str")
    if entries:
        model_ops.set_metadata(catalog, mid, entries, replace=False)
    if loss is not None:
        for it, value in enumerate(loss):
            add_scalar(catalog, mid, "loss", "val", value, it)
    return mid


def names(catalog, **kw) -> list[str]:
    columns = [parse_column(c) for c in kw.pop("columns", ["name"])]
    where = [parse_condition(k, v) for k, v in kw.pop("where", [])]
    return [r["name"] for r in page(catalog, TableQuery(columns=columns, where=where, **kw)).rows]


@pytest.fixture
def models(catalog):
    make(catalog, "a", loss=[0.9, 0.5], lr=0.1, dataset="v2", tags=["x"])
    make(catalog, "b", loss=[0.8, 0.2], lr=0.001, dataset="v10", tags=["x", "y"])
    make(catalog, "c", loss=[0.3, 0.7], lr=0.01, dataset="v1", project="q")
    make(catalog, "d", loss=[float("nan")], dataset="<b>v3</b>")  # NaN: sorts with "missing"
    make(catalog, "e")
    return catalog


def test_sort_by_metric_last_value_missing_last_both_ways(models):
    up, down = names(models, sort="metric.loss/val"), names(models, sort="-metric.loss/val")
    assert up[:3] == ["b", "a", "c"] and down[:3] == ["c", "a", "b"]
    assert set(up[3:]) == set(down[3:]) == {"d", "e"}  # no value or NaN: last, both ways
    # pages across the boundary between models with and without the value
    for sort in ("metric.loss/val", "-metric.loss/val"):
        full = names(models, sort=sort)
        paged = [n for off in (0, 2, 4) for n in names(models, sort=sort, limit=2, offset=off)]
        assert paged == full
        assert names(models, sort=sort, limit=2, offset=3) == full[3:5]
    result = page(models, TableQuery(columns=[parse_column("metric.loss/val")], limit=2,
                                     sort="metric.loss/val"))
    assert result.total == 5 and result.more
    assert [r["cells"]["metric.loss/val"]["value"] for r in result.rows] == [0.2, 0.5]
    d = page(models, TableQuery(columns=[parse_column("metric.loss/val")], name="d")).rows[0]
    assert math.isnan(d["cells"]["metric.loss/val"]["value"])


def test_sort_by_metadata_numbers_then_text(models):
    ordered = names(models, sort="metadata.lr")
    assert ordered[:3] == ["b", "c", "a"] and set(ordered[3:]) == {"d", "e"}  # missing: last
    assert names(models, sort="-metadata.lr")[:3] == ["a", "c", "b"]
    assert names(models, sort="metadata.dataset") == ["d", "c", "b", "a", "e"]  # text order


def test_filters_on_any_column(models):
    assert sorted(names(models, where=[("metric.loss/val", "<0.6")])) == ["a", "b"]
    assert sorted(names(models, where=[("metric.loss/val", ">=0.7")])) == ["c"]
    assert sorted(names(models, where=[("metadata.lr", ">0.005")])) == ["a", "c"]
    assert names(models, where=[("metadata.dataset", "v10")]) == ["b"]
    assert sorted(names(models, where=[("metadata.dataset", "!=v10")])) == ["a", "c", "d", "e"]
    assert names(models, where=[("metadata.dataset", "~<B>")]) == ["d"]  # contains, any case
    # a number matches the stored number however it is spelt; != keeps models without the key
    assert names(models, where=[("metadata.lr", "0.10")]) == ["a"]
    assert names(models, where=[("metadata.lr", "1e-3")]) == ["b"]
    assert sorted(names(models, where=[("metadata.lr", "!=0.10")])) == ["b", "c", "d", "e"]
    assert names(models, where=[("metadata.dataset", "=1")]) == []
    # != on a metric keeps models without it (d: NaN, e: none), like metadata and built-ins
    assert sorted(names(models, where=[("metric.loss/val", "!=0.5")])) == ["b", "c", "d", "e"]
    assert sorted(names(models, where=[("tags", "y")])) == ["b"]
    assert sorted(names(models, where=[("tags", "!=x")])) == ["c", "d", "e"]
    assert sorted(names(models, where=[("project", "q")])) == ["c"]
    assert sorted(names(models, tags=["x", "-y"])) == ["a"]
    assert names(models, where=[("name", "~%")]) == []  # LIKE wildcards are literal
    for key, value in (("metric.loss/val", "<abc"), ("metric.loss/val", "~a"),
                       ("status", "=gone"), ("tags", "<x")):
        with pytest.raises(TableError):
            names(models, where=[(key, value)])
    for bad in ("size", "metadata.", "metric.loss"):
        with pytest.raises(TableError):
            parse_column(bad)


def test_last_value_follows_the_highest_iteration(catalog):
    mid = make(catalog, "m")
    add_scalar(catalog, mid, "loss", "val", 0.5, 10)
    add_scalar(catalog, mid, "loss", "val", 0.9, 3)  # an older iteration: not the last value
    add_scalar(catalog, mid, "loss", "val", 0.4, 10)  # the same point again: replaced
    with catalog.read() as conn:
        rows = conn.execute(select(s.model_metric_last.c.iteration, s.model_metric_last.c.value)
                            .where(s.model_metric_last.c.model_id == mid)).all()
    assert [tuple(r) for r in rows] == [(10, 0.4)]
    model_ops.remove(catalog, mid)
    with catalog.read() as conn:
        assert conn.execute(select(s.model_metric_last)).all() == []


def test_an_older_catalog_gets_the_index_back_filled(catalog):
    a = make(catalog, "a", loss=[0.9, 0.1])
    b = make(catalog, "b", loss=[0.2, 0.3])
    with catalog.write() as conn:  # as a catalog of release 0.1: no table, no triggers
        if catalog.is_sqlite:
            for trigger in ("last_insert", "last_update", "bucket_insert", "bucket_update"):
                conn.execute(text(f"DROP TRIGGER model_scalars_{trigger}"))
        else:
            for function in ("last", "bucket_insert", "bucket_update"):
                conn.execute(text(f"DROP FUNCTION model_scalars_{function}() CASCADE"))
        conn.execute(text("DROP TABLE model_metric_last"))
        conn.execute(text("DROP TABLE model_scalar_buckets"))
        conn.execute(text("DROP TABLE alembic_version"))  # from before schema migrations
    reopened = SqlCatalog(catalog.url)
    try:
        assert names(reopened, sort="metric.loss/val") == ["a", "b"]
        assert model_metrics.chart_series(reopened, a, 1)["loss"]["val"]["y"] == [0.5]
        add_scalar(reopened, a, "loss", "val", 0.5, 2)  # the triggers are back too
        assert names(reopened, sort="metric.loss/val") == ["b", "a"]
        assert model_metrics.chart_series(reopened, a, 1)["loss"]["val"]["y"] == [0.5]
        assert model_metrics.chart_series(reopened, b)["loss"]["val"]["y"] == [0.2, 0.3]
    finally:
        reopened.close()


def test_chart_series_rolls_long_series_up(catalog):
    """Short series come back point by point; long ones as bucket means kept by triggers
    (NaN ignored, a replaced point replaces its value in the mean)."""
    mid = make(catalog, "long")
    width = s.BUCKET_WIDTH
    for it in range(3 * width):
        add_scalar(catalog, mid, "loss", "train", float(it), it)
    add_scalar(catalog, mid, "loss", "train", float("nan"), 3 * width)  # a bucket of only NaN
    add_scalar(catalog, mid, "loss", "train", 1000.0, 0)  # replaces the point at 0
    add_scalar(catalog, mid, "loss", "short", 1.0, 5)
    add_scalar(catalog, mid, "Summary", "mAP", 0.5, -(2**31))  # single values are not charted
    series = model_metrics.chart_series(catalog, mid, max_points=2 * width)
    assert set(series) == {"loss"}
    long = series["loss"]["train"]
    assert long["x"] == [0, width, 2 * width, 3 * width]
    first = (1000.0 + sum(range(1, width))) / width
    assert long["y"][:3] == pytest.approx([first, width + (width - 1) / 2,
                                           2 * width + (width - 1) / 2])
    assert math.isnan(long["y"][3])
    assert series["loss"]["short"] == {"name": "short", "x": [5], "y": [1.0]}
    few = model_metrics.chart_series(catalog, mid, max_points=2)["loss"]["train"]
    assert len(few["x"]) == 2 and few["x"][0] == 0


def test_every_builtin_column_sorts_and_pages_the_same_on_both(catalog):
    """Sorting by any built-in column, both ways: the expected order (missing values last both
    ways, ties by id), and pages of 2 that add up to the whole list."""
    spec = [("b", "p", "PyTorch", 3, "x", ["t2"]), ("A", "q", None, None, "", []),
            ("a", None, "Keras", 10, "z", ["t1", "t3"]), ("c", "p", "Keras", 1, "y", ["t1"])]
    ids = {}
    for name, project, framework, iteration, comment, tags in spec:
        mid = model_ops.create_model(catalog, name=name, project=project, framework=framework,
                                     comment=comment, tags=tags)
        if iteration is not None:
            model_ops.update_fields(catalog, mid, iteration=iteration)
        ids[name] = mid
    model_ops.publish(catalog, ids["c"])
    model_ops.set_archived(catalog, ids["A"], True)

    def order(sort: str) -> list[str]:
        full = names(catalog, sort=sort, archived=True)
        paged = [n for off in (0, 2) for n in
                 names(catalog, sort=sort, archived=True, limit=2, offset=off)]
        assert paged == full, sort
        assert sorted(full) == sorted(ids), sort
        return full

    assert order("name") == ["A", "a", "b", "c"]  # byte order (PostgreSQL too: C collation)
    assert order("-name") == ["c", "b", "a", "A"]
    assert order("iteration") == ["c", "b", "a", "A"] and order("-iteration")[-1] == "A"
    assert order("-iteration")[:3] == ["a", "b", "c"]
    by_id = lambda *n: sorted(n, key=ids.get)  # noqa: E731  (ties: by id)
    assert order("framework") == [*by_id("a", "c"), "b", "A"]  # no framework: last
    assert order("-framework") == ["b", *by_id("a", "c")[::-1], "A"]
    assert order("status") == [*by_id("a", "b"), "c", "A"]  # draft, published, archived
    assert order("-status") == ["A", "c", *by_id("a", "b")[::-1]]
    assert order("comment") == ["A", "b", "c", "a"]
    assert order("project") == [*by_id("b", "c"), "A", "a"]  # no project: last
    assert order("-project") == ["A", *by_id("b", "c")[::-1], "a"]
    for key in ("tags", "versions", "updated", "created", "task", "id"):
        up, down = order(key), order("-" + key)
        assert len(up) == len(down) == 4
    assert order("id") == sorted(ids, key=ids.get) and order("-id") == order("id")[::-1]
    # filters on built-in columns
    assert sorted(names(catalog, where=[("iteration", ">=3")])) == ["a", "b"]
    assert names(catalog, where=[("status", "published")]) == ["c"]
    assert sorted(names(catalog, where=[("status", "!=published")], archived=True)) == \
        ["A", "a", "b"]
    assert sorted(names(catalog, where=[("framework", "Keras")])) == ["a", "c"]
    assert sorted(names(catalog, where=[("framework", "!=Keras")])) == ["b"]  # A: archived
    assert sorted(names(catalog, where=[("comment", "~Y")])) == ["c"]
    assert sorted(names(catalog, where=[("project", "!=p")], archived=True)) == ["A", "a"]
    assert names(catalog, where=[("id", ids["b"])]) == ["b"]
