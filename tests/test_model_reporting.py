"""Metrics and plots reported on models (ClearML's ``Model.report_*``), on real stores."""

from __future__ import annotations

import json
import math
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from clearml_hooks import InputModel, Model, OutputModel, Task
from clearml_hooks.cli import cli
from clearml_hooks.model_reporting import SINGLE_VALUE_ITERATION, SeriesInfo
from clearml_hooks.store import schema as s


def _count(store, table, model_id: str) -> int:
    with store.catalog.read() as conn:
        return conn.execute(select(func.count()).select_from(table).where(
            table.c.model_id == model_id)).scalar_one()


def _dump(store, model_id: str) -> tuple[list, list]:
    """Everything stored for the model, to compare before and after a failed call."""
    with store.catalog.read() as conn:
        scalars = [tuple(r) for r in conn.execute(select(s.model_scalars).where(
            s.model_scalars.c.model_id == model_id).order_by(*s.model_scalars.primary_key))]
        plots = [tuple(r) for r in conn.execute(select(s.model_plots).where(
            s.model_plots.c.model_id == model_id).order_by(*s.model_plots.primary_key))]
    return scalars, plots


def test_scalars_round_trip(task):
    m = OutputModel(name="scalars")
    for i in range(5):
        m.report_scalar("loss", "train", 1.0 / (i + 1), i)
        m.report_scalar("loss", "val", 2.0 / (i + 1), iteration=i)
    m.report_scalar("accuracy", "val", 0.5, 10)
    m.report_scalar("loss", "train", 0.1, 4)  # the same point again replaces its value

    scalars = Model(m.id).get_reported_scalars()  # read back through a fresh object
    assert scalars["loss"]["train"] == {"name": "train", "x": [0, 1, 2, 3, 4],
                                        "y": [1.0, 0.5, 1 / 3, 0.25, 0.1]}
    assert scalars["loss"]["val"]["y"] == [2.0, 1.0, 2 / 3, 0.5, 0.4]
    assert scalars["accuracy"]["val"]["x"] == [10]
    assert m.get_all_reported_scalars() == scalars
    assert m.get_last_scalar_metrics() == {
        "loss": {"train": {"last": 0.1, "min": 0.1, "max": 1.0},
                 "val": {"last": 0.4, "min": 0.4, "max": 2.0}},
        "accuracy": {"val": {"last": 0.5, "min": 0.5, "max": 0.5}}}

    by_time = m.get_reported_scalars(x_axis="timestamp")["loss"]["train"]["x"]
    assert all(abs(x / 1000 - time.time()) < 60 for x in by_time)
    assert m.get_reported_scalars(x_axis="iso_time")["accuracy"]["val"]["x"][0].endswith("Z")
    sampled = m.get_reported_scalars(max_samples=2)["loss"]["val"]
    assert sampled["x"] == [0, 2] and sampled["y"] == [1.5, (2 / 3 + 0.5 + 0.4) / 3]


def test_single_values_are_clearml_summary_scalars(task):
    m = OutputModel(name="single")
    m.report_single_value("mAP", 0.7)
    m.report_single_value("epochs", 8)
    m.report_single_value("mAP", 0.75)  # the last one wins
    m.report_scalar("loss", "train", 1.0, 0)
    assert m.get_reported_single_values() == {"epochs": 8.0, "mAP": 0.75}
    assert m.get_reported_single_value("mAP") == 0.75
    assert m.get_reported_single_value("nope") is None
    # stored as ClearML stores them; not part of the scalar graphs
    assert m.get_reported_scalars() == {"loss": {"train": {"name": "train", "x": [0], "y": [1.0]}}}
    assert "Summary" not in m.get_last_scalar_metrics()
    with task.store.catalog.read() as conn:
        rows = conn.execute(select(s.model_scalars.c.title, s.model_scalars.c.iteration).where(
            s.model_scalars.c.series == "mAP")).all()
    assert rows == [("Summary", SINGLE_VALUE_ITERATION)]


def test_numbers_of_every_kind_and_non_finite_values(task):
    m = OutputModel(name="numbers")
    m.report_scalar("t", "int", 3, 0)
    m.report_scalar("t", "bool", True, 0)
    m.report_scalar("t", "nan", float("nan"), 0)
    m.report_scalar("t", "inf", float("inf"), 0)
    m.report_scalar("t", "-inf", float("-inf"), 1)
    m.report_scalar("t", "big-iteration", 1.0, 2**40)
    y = {k: v["y"][0] for k, v in m.get_reported_scalars()["t"].items()}
    assert y["int"] == 3.0 and y["bool"] == 1.0
    assert math.isnan(y["nan"]) and y["inf"] == math.inf and y["-inf"] == -math.inf
    assert m.get_reported_scalars()["t"]["big-iteration"]["x"] == [2**40]
    assert math.isnan(m.get_last_scalar_metrics()["t"]["nan"]["last"])


def test_numpy_and_torch_values_when_installed(task):
    import numpy as np  # in the main tox env: a missing numpy must fail, not skip
    m = OutputModel(name="numpy")
    m.report_scalar("t", "np", np.float32(0.5), np.int64(3))
    m.report_histogram("h", "s", np.arange(4), iteration=np.int32(1))
    assert m.get_reported_scalars()["t"]["np"] == {"name": "np", "x": [3], "y": [0.5]}
    assert m.get_reported_plots()[0]["figure"]["data"][0]["y"] == [0, 1, 2, 3]


@pytest.mark.parametrize("call, message", [
    (lambda m: m.report_scalar("loss", "train", "0.5", 1), "must be a number"),
    (lambda m: m.report_scalar("loss", "train", None, 1), "must be a number"),
    (lambda m: m.report_scalar("loss", "train", [1, 2], 1), "must be a number"),
    (lambda m: m.report_scalar("", "train", 1.0, 1), "title must be a non-empty string"),
    (lambda m: m.report_scalar("  ", "train", 1.0, 1), "title must be a non-empty string"),
    (lambda m: m.report_scalar(None, "train", 1.0, 1), "title must be a string"),
    (lambda m: m.report_scalar("x" * 256, "train", 1.0, 1), "longer than 255"),
    (lambda m: m.report_scalar("loss", 3, 1.0, 1), "series must be a string"),
    (lambda m: m.report_scalar("loss", "train", 1.0, None), "iteration must be an integer"),
    (lambda m: m.report_scalar("loss", "train", 1.0, 1.5), "iteration must be an integer"),
    (lambda m: m.report_scalar("loss", "train", 1.0, True), "iteration must be an integer"),
    (lambda m: m.report_single_value("", 1.0), "name must be a non-empty string"),
    (lambda m: m.report_single_value("acc", "high"), "must be a number"),
    (lambda m: m.report_histogram("h", "s", ["a", "b"]), "numbers only"),
    (lambda m: m.report_histogram("h", "s", [1, 2], mode="pile"), "mode must be one of"),
    (lambda m: m.report_histogram("", "s", [1, 2]), "title must be a non-empty string"),
    (lambda m: m.report_confusion_matrix("cm", "s", [[1, 2], [3]]), "rectangular"),
    (lambda m: m.report_confusion_matrix("cm", "s", [[1, 2]], xlabels=["a"]), "1 labels for 2"),
    (lambda m: m.report_scatter2d("sc", "s", [[1, 2, 3]]), "2 columns"),
    (lambda m: m.report_scatter2d("sc", "s", [[1, 2]], labels=["a", "b"]), "2 labels for 1"),
    (lambda m: m.report_line_plot("l", [], "x", "y"), "at least one series"),
    (lambda m: m.report_line_plot("l", [{"name": "a", "data": [1, 2]}], "x", "y"), "2-D"),
    (lambda m: m.report_table("t", "s"), "exactly one of"),
    (lambda m: m.report_table("t", "s", table_plot=[["a"]], csv="x.csv"), "exactly one of"),
    (lambda m: m.report_table("t", "s", table_plot="a,b"), "DataFrame or a list of rows"),
    (lambda m: m.report_table("t", "s", table_plot=[["a"], [1]], extra_layout=3), "dict"),
    (lambda m: m.report_surface("sf", "s", [[1]], camera=[1, 2]), "camera"),
])
def test_bad_input_is_a_value_error_and_changes_nothing(task, call, message):
    m = OutputModel(name="bad")
    m.report_scalar("loss", "train", 0.25, 1)
    m.report_single_value("acc", 0.5)
    m.report_histogram("h", "s", [1, 2])
    before = _dump(task.store, m.id)
    with pytest.raises(ValueError, match=message):
        call(m)
    assert _dump(task.store, m.id) == before


def test_reporting_on_a_removed_model_is_a_value_error(task):
    m = OutputModel(name="gone")
    Model.remove(m.id)
    with pytest.raises(ValueError, match="no model with id"):
        m.report_scalar("loss", "train", 1.0, 0)
    with pytest.raises(ValueError, match="no model with id"):
        m.report_table("t", "s", table_plot=[["a"], [1]])


def test_plots_round_trip(task, tmp_path):
    m = OutputModel(name="plots")
    m.report_histogram("hist", "one", [1, 2, 3], iteration=1, xlabels=["a", "b", "c"],
                       xaxis="bucket", yaxis="count")
    m.report_vector("hist", "two", [[1, 2], [3, 4]], labels=["x", "y"], mode="stack")
    m.report_table("table", "rows", iteration=2,
                   table_plot=[["model", "mAP"], ["n", 28.0], ["s", float("nan")]])
    csv = tmp_path / "t.csv"
    csv.write_text("name,size\nyolo-n,640\n")
    m.report_table("table", "csv", csv=str(csv))
    m.report_line_plot("accuracy", [SeriesInfo("train", [(0, 0.3), (1, 0.5)]),
                                    {"name": "val", "data": [[0, 0.2], [1, 0.4]],
                                     "labels": ["e0", "e1"]}],
                       xaxis="epoch", yaxis="acc", iteration=3, comment="c",
                       extra_layout={"height": 600})
    m.report_scatter2d("scatter", "pts", [(0, 1), (1, float("inf"))], labels=["a", "b"],
                       mode="markers")
    m.report_scatter3d("scatter3", "pts", [(0, 1, 2)], zaxis="z")
    m.report_confusion_matrix("cm", "val", [[5, 1], [2, 7]], iteration=3,
                              xlabels=["cat", "dog"], ylabels=["cat", "dog"], yaxis_reversed=True)
    m.report_matrix("cm", "train", [[1]])
    m.report_surface("surface", "s", [[1, 2], [3, 4]], camera=(1, 1, 1))

    plots = Model(m.id).get_reported_plots()
    by_key = {(p["metric"], p["variant"], p["iter"]): p for p in plots}
    assert [p["iter"] for p in plots] == sorted(p["iter"] for p in plots)
    assert all(p["type"] == "plot" and p["model"] == m.id for p in plots)

    def fig(key):
        p = by_key[key]
        assert json.loads(p["plot_str"]) == p["figure"]  # ClearML's plot_str is the figure
        return p["figure"]

    hist = by_key["hist", "one", 1]
    assert hist["kind"] == "histogram"
    (bar,) = fig(("hist", "one", 1))["data"]
    assert bar["type"] == "bar" and bar["y"] == [1, 2, 3] and bar["x"] == ["a", "b", "c"]
    layout = fig(("hist", "one", 1))["layout"]
    assert layout["barmode"] == "group" and layout["xaxis"]["title"]["text"] == "bucket"
    vec = fig(("hist", "two", 0))
    assert [t["y"] for t in vec["data"]] == [[1, 2], [3, 4]] and vec["layout"]["barmode"] == "stack"
    assert [t["name"] for t in vec["data"]] == ["x", "y"]
    (table,) = fig(("table", "rows", 2))["data"]
    assert table["type"] == "table" and table["header"]["values"] == ["model", "mAP"]
    assert table["cells"]["values"] == [["n", "s"], [28.0, None]]
    assert fig(("table", "csv", 0))["data"][0]["cells"]["values"][0][0] == "yolo-n"
    line = by_key["accuracy", "", 3]
    assert line["kind"] == "line"
    assert [(t["name"], t["x"], t["y"], t["text"]) for t in line["figure"]["data"]] == [
        ("train", [0, 1], [0.3, 0.5], None), ("val", [0, 1], [0.2, 0.4], ["e0", "e1"])]
    assert line["figure"]["layout"]["height"] == 600  # extra_layout merged in
    assert line["figure"]["layout"]["title"]["text"] == "accuracy<br><sup>c</sup>"
    (scatter,) = fig(("scatter", "pts", 0))["data"]
    assert scatter["x"] == [0, 1] and scatter["y"] == [1, None] and scatter["mode"] == "markers"
    assert fig(("scatter3", "pts", 0))["data"][0]["z"] == [2]
    cm = by_key["cm", "val", 3]
    assert cm["kind"] == "confusion_matrix"
    assert cm["figure"]["data"][0]["z"] == [[5, 1], [2, 7]]
    assert cm["figure"]["layout"]["yaxis"]["autorange"] == "reversed"
    assert by_key["cm", "train", 0]["kind"] == "confusion_matrix"
    assert fig(("surface", "s", 0))["layout"]["scene"]["camera"]["eye"] == {"x": 1, "y": 1, "z": 1}

    # the same (title, series, iteration) again replaces the plot
    m.report_confusion_matrix("cm", "val", [[9, 0], [0, 9]], iteration=3)
    again = {(p["metric"], p["variant"], p["iter"]): p for p in m.get_reported_plots()}
    assert again["cm", "val", 3]["figure"]["data"][0]["z"] == [[9, 0], [0, 9]]
    assert len(again) == len(by_key)
    assert {p["iter"] for p in m.get_reported_plots(max_iterations=1)} == {3}


def test_dataframe_table_when_pandas_is_installed(task):
    import pandas as pd
    m = OutputModel(name="frame")
    df = pd.DataFrame({"size": [640, 1280], "mAP": [28.0, float("nan")]}, index=["n", "x"])
    m.report_table("Summary Table", "Comparison", iteration=0, table_plot=df)
    (table,) = m.get_reported_plots()[0]["figure"]["data"]
    assert table["header"]["values"] == ["", "size", "mAP"]
    assert table["cells"]["values"] == [["n", "x"], [640, 1280], [28.0, None]]


def test_every_model_class_reports(task, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    imported = InputModel.import_model(str(weights), name="imported")
    imported.report_single_value("eval-acc", 0.9)
    out = OutputModel(name="out")
    out.report_scalar("loss", "train", 0.5, 1)
    out.publish()
    out.report_single_value("after-publish", 1.0)  # evaluation results may come later
    assert Model(imported.id).get_reported_single_values() == {"eval-acc": 0.9}
    assert Model(out.id).get_reported_single_values() == {"after-publish": 1.0}
    assert Model(out.id).get_reported_scalars()["loss"]["train"]["y"] == [0.5]


def test_remove_removes_scalars_and_plots(task):
    keep = OutputModel(name="keep")
    gone = OutputModel(name="gone")
    for m in (keep, gone):
        m.report_scalar("loss", "train", 1.0, 0)
        m.report_single_value("acc", 0.5)
        m.report_histogram("h", "s", [1, 2])
    with task.store.catalog.read() as conn:  # CASCADE needs SQLite's foreign keys on
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert Model.remove(gone.id)
    assert _count(task.store, s.model_scalars, gone.id) == 0
    assert _count(task.store, s.model_plots, gone.id) == 0
    assert _count(task.store, s.model_scalars, keep.id) == 2
    assert _count(task.store, s.model_plots, keep.id) == 1


def test_report_is_one_statement(task):
    """A report inside a training loop costs one INSERT (its time is in benchmarks/)."""
    import threading

    m = OutputModel(name="cheap")
    m.report_scalar("warm", "up", 0.0, 0)
    statements = []
    from sqlalchemy import event

    engine = task.store.catalog.engine
    me = threading.get_ident()

    def record(conn, cursor, statement, *args):
        if threading.get_ident() == me:  # not the background worker's statements
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        m.report_scalar("loss", "train", 0.5, 1)
        m.report_confusion_matrix("cm", "s", [[1]])
    finally:
        event.remove(engine, "before_cursor_execute", record)
    writes = [x for x in statements if not x.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    assert len(writes) == 2 and all(x.startswith("INSERT") for x in writes)


def test_cli_show_lists_latest_scalars(task, store_dir):
    m = OutputModel(name="shown")
    for i in range(3):
        m.report_scalar("loss", "train", 1.0 / (i + 1), i)
    m.report_single_value("mAP", 0.75)
    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(store_dir), "models", "show", m.id, "--json"],
                           obj={})
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["scalars"] == [{"title": "loss", "series": "train", "iteration": 2,
                                "last": 1 / 3, "min": 1 / 3, "max": 1.0}]
    assert info["single_values"] == {"mAP": 0.75}
    table = runner.invoke(cli, ["--home", str(store_dir), "models", "show", m.id], obj={})
    assert table.exit_code == 0, table.output
    assert "scalars (latest value)" in table.output and "0.333333" in table.output
    assert "mAP" in table.output


def test_reports_on_postgres(team_store):
    with Task.init(project_name="team", task_name="reporting") as task:
        assert task.store.catalog.engine.dialect.name == "postgresql"
        m = OutputModel(name="pg")
        for i in range(3):
            m.report_scalar("loss", "train", 1.0 / (i + 1), i)
        m.report_scalar("loss", "train", 0.2, 2)  # upsert on PostgreSQL too
        m.report_scalar("loss", "nan", float("nan"), 0)
        m.report_scalar("loss", "inf", float("inf"), 0)
        m.report_single_value("mAP", 0.75)
        m.report_confusion_matrix("cm", "val", [[1, 2], [3, 4]], iteration=1)
        m.report_confusion_matrix("cm", "val", [[4, 3], [2, 1]], iteration=1)
        with pytest.raises(ValueError, match="must be a number"):
            m.report_scalar("loss", "train", "x", 3)

        scalars = Model(m.id).get_reported_scalars()
        assert scalars["loss"]["train"]["y"] == [1.0, 0.5, 0.2]
        assert math.isnan(scalars["loss"]["nan"]["y"][0])
        assert scalars["loss"]["inf"]["y"] == [math.inf]
        assert m.get_last_scalar_metrics()["loss"]["train"] == {"last": 0.2, "min": 0.2, "max": 1.0}
        assert m.get_reported_single_values() == {"mAP": 0.75}
        plots = m.get_reported_plots()
        assert len(plots) == 1 and plots[0]["figure"]["data"][0]["z"] == [[4, 3], [2, 1]]

        assert Model.remove(m.id)
        assert _count(task.store, s.model_scalars, m.id) == 0
        assert _count(task.store, s.model_plots, m.id) == 0


def test_the_sdk_and_the_store_agree_on_single_values():
    from clearml_hooks import model_reporting
    from clearml_hooks.store import model_metrics

    assert model_reporting.SUMMARY_TITLE == model_metrics.SUMMARY_TITLE
    assert model_reporting.SINGLE_VALUE_ITERATION == model_metrics.SINGLE_VALUE_ITERATION
