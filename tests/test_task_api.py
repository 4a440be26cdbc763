"""ClearML's Task API shape: ``Task.init``'s positional parameters in ClearML's order, and
``Task.get_task`` returning a Task-like view of a stored task."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch

from clearml_hooks import Task

# ClearML's Task.init signature (clearml/task.py), in order
CLEARML_INIT = ("project_name", "task_name", "task_type", "tags", "reuse_last_task_id",
                "continue_last_task", "output_uri", "auto_connect_arg_parser",
                "auto_connect_frameworks", "auto_resource_monitoring", "auto_connect_streams",
                "deferred_init")


def test_init_parameters_are_clearmls_in_clearmls_order():
    params = list(inspect.signature(Task.init).parameters)
    assert tuple(params[:len(CLEARML_INIT)]) == CLEARML_INIT


def test_every_positional_parameter_is_accepted(store_dir, tmp_path):
    task = Task.init("proj", "run", "testing", ["a", "b"], False, True, str(store_dir), False,
                     {"pytorch": "*.keep"}, False, False, False)
    assert (task.project, task.name, task.task_type, task.tags) == ("proj", "run", "testing",
                                                                    ["a", "b"])
    assert task.store.home == str(store_dir)
    torch.save({"w": torch.ones(2)}, tmp_path / "skipped.pt")  # the 9th: auto_connect_frameworks
    torch.save({"w": torch.ones(2)}, tmp_path / "m.keep")
    assert task.capture_stats.get("saves") == 1


def test_auto_connect_frameworks_positional_false_captures_nothing(store_dir, tmp_path):
    task = Task.init("proj", "run", "training", None, True, False, str(store_dir), True, False)
    torch.save({"w": torch.ones(2)}, tmp_path / "m.pt")
    assert task.capture_stats.get("saves", 0) == 0


def test_keywords_keep_working_and_ignored_ones_say_so_in_debug(store_dir, caplog):
    caplog.set_level(logging.DEBUG, logger="clearml_hooks")
    task = Task.init(project_name="proj", task_name="run", output_uri=str(store_dir),
                     auto_connect_frameworks={"pytorch": True}, reuse_last_task_id=False,
                     auto_connect_arg_parser=False, report_memory_usage=True)
    assert (task.project, task.name) == ("proj", "run")
    for name in ("reuse_last_task_id", "auto_connect_arg_parser", "report_memory_usage"):
        assert f"Task.init({name}=...) does not apply here" in caplog.text
    assert "continue_last_task" not in caplog.text  # left at ClearML's default: nothing to say


def test_an_unknown_keyword_is_a_type_error(store_dir):
    with pytest.raises(TypeError, match="not_a_clearml_arg"):
        Task.init(project_name="p", task_name="t", output_uri=str(store_dir),
                  not_a_clearml_arg=1)
    assert Task.current_task() is None


# -- Task.get_task ------------------------------------------------------------------------------

def _finished_task(tmp_path, name: str = "train", project: str = "vision") -> str:
    """A run on the default store that saved a model at iteration 7 and loaded one."""
    task = Task.init(project_name=project, task_name=name, tags=["best"])
    torch.save({"w": torch.zeros(2)}, tmp_path / "in.pt")
    task.set_last_iteration(7)
    torch.save({"w": torch.ones(2)}, tmp_path / "out.pt")
    torch.load(tmp_path / "in.pt")
    task.connect_label_enumeration({"cat": 1, "dog": 2})
    task.close()
    return task.id


def test_get_task_by_id_is_a_full_read_only_view(tmp_path):
    task_id = _finished_task(tmp_path)
    view = Task.get_task(task_id=task_id)
    assert (view.id, view.name, view.project, view.task_type) == (task_id, "train", "vision",
                                                                 "training")
    assert view.status == view.get_status() == "completed"
    assert view.tags == view.get_tags() == ["best"]
    assert view.labels == view.get_labels_enumeration() == {"cat": 1, "dog": 2}
    assert view.get_last_iteration() == 7
    models = view.models
    assert set(models) == {"input", "output"}
    assert [m.name for m in models["output"]] == [m.name for m in view.get_models()["output"]]
    assert {m.id for m in models["input"]} <= {m.id for m in models["output"]}
    assert models["output"]["out.pt"].id == models["output"][-1].id  # by the saved file's name
    assert not hasattr(view, "update_output_model") and not hasattr(view, "close")


def test_get_task_by_project_and_name_is_the_newest_with_that_exact_name(tmp_path):
    _finished_task(tmp_path, name="train")
    newest = _finished_task(tmp_path, name="train")
    _finished_task(tmp_path, name="train-2")
    _finished_task(tmp_path, name="train", project="other")
    assert Task.get_task(project_name="vision", task_name="train").id == newest
    assert Task.get_task(task_name="train-2").name == "train-2"


def test_get_task_of_the_open_task_is_the_task_itself(store_dir):
    task = Task.init(project_name="p", task_name="t", output_uri=str(store_dir))
    assert Task.get_task(task_id=task.id) is task
    assert Task.get_task(project_name="p", task_name="t") is task


def test_get_task_that_does_not_exist_is_a_value_error(tmp_path):
    _finished_task(tmp_path)
    with pytest.raises(ValueError, match="no task with id"):
        Task.get_task(task_id="0" * 32)
    with pytest.raises(ValueError, match="no task named 'nope'"):
        Task.get_task(project_name="vision", task_name="nope")
    with pytest.raises(ValueError, match="task_id, or task_name"):
        Task.get_task()


def test_get_tasks_by_ids_and_by_name_pattern(tmp_path):
    first = _finished_task(tmp_path, name="sweep-1")
    second = _finished_task(tmp_path, name="sweep-2")
    _finished_task(tmp_path, name="other")
    assert [t.id for t in Task.get_tasks(task_ids=[first, second])] == [first, second]
    assert [t.name for t in Task.get_tasks(project_name="vision", task_name="^sweep-")] == [
        "sweep-2", "sweep-1"]


def test_the_open_task_has_clearmls_status_attribute():
    task = Task.init(project_name="p", task_name="t")  # the default store, read back below
    assert task.status == "in_progress"
    task.close()
    assert Task.get_task(task_id=task.id).status == "completed"
