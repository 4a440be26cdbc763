"""ClearML's Logger: scripts that report scalars run unchanged, and the iteration they report is
the one recorded with the models they save."""

from __future__ import annotations

import pytest
import torch

from clearml_hooks import Logger


def test_reported_iteration_is_recorded_with_the_next_snapshots(task, tmp_path):
    logger = task.get_logger()
    assert Logger.current_logger() is logger
    for epoch in range(3):
        logger.report_scalar("loss", "train", 1.0 / (epoch + 1), iteration=epoch * 50)
        torch.save({"epoch": epoch}, tmp_path / "ckpt.pt")
    task.flush(wait_for_uploads=True)
    (model,) = task.models["output"]
    assert [s["iteration"] for s in model.snapshots] == [0, 50, 100]
    assert logger.get_last_scalar("loss", "train") == pytest.approx(1 / 3)


def test_an_older_iteration_does_not_move_the_counter_back(task):
    logger = task.get_logger()
    logger.report_scalar("loss", "train", 0.5, iteration=10)
    logger.report_scalar("loss", "val", 0.7, iteration=3)
    assert task.get_last_iteration() == 10


def test_other_clearml_reports_are_accepted(task):
    logger = task.get_logger()
    logger.report_text("hello")
    logger.report_histogram("h", "s", values=[1, 2, 3], iteration=7)
    logger.report_single_value("accuracy", 0.9)
    assert task.get_last_iteration() == 7
    assert logger.last_scalars["Summary"]["accuracy"] == 0.9
    with pytest.raises(AttributeError):
        logger.no_such_method()  # noqa: B018


@pytest.mark.parametrize(("value", "iteration"), [("0.5", 1), (None, 1), (0.5, "3"), (0.5, True)])
def test_bad_scalar_reports_are_clear_errors(task, value, iteration):
    with pytest.raises(ValueError, match="report_scalar"):
        task.get_logger().report_scalar("loss", "train", value, iteration=iteration)
