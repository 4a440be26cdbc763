"""ClearML compatibility of captured models: their names ("<task name> - <file stem>", as
ClearML's WeightsFileHandler names them) and the task's label enumeration."""

from __future__ import annotations

import os

import pytest
import torch

from clearml_hooks import Model, OutputModel, Task
from clearml_hooks.store.ingest import NAME_MAX, captured_model_name


@pytest.mark.parametrize(("task_name", "file", "expected"), [
    ("resnet", "best.pt", "resnet - best"),
    ("resnet", "model.tar.gz", "resnet - model.tar"),  # pathlib's stem, as ClearML's
    ("resnet", "saved_model", "resnet - saved_model"),  # a folder
    ("resnet", ".hidden", "resnet - .hidden"),
    (None, "best.pt", "best.pt"),  # no task row (never expected): the file name
])
def test_captured_model_name_rule(task_name, file, expected):
    assert captured_model_name(task_name, file) == expected


def test_a_long_name_fits_the_catalog():
    assert len(captured_model_name("t" * 600, "best.pt")) == NAME_MAX


def _outputs(task: Task) -> list[Model]:
    assert task.flush(wait_for_uploads=True)
    return list(task.models["output"])


def test_clearml_queries_find_captured_models_by_clearml_name(store_dir, tmp_path):
    with Task.init(project_name="vision", task_name="resnet", output_uri=str(store_dir)) as task:
        for epoch in range(2):
            task.set_last_iteration(epoch)
            torch.save({"epoch": epoch}, tmp_path / "best.pt")  # the same path: one model
        [model] = _outputs(task)
        assert model.name == "resnet - best"
        # the file name stays visible: the model's source and its name on the task
        assert model.source == str(tmp_path / "best.pt")
        assert task.models["output"]["best.pt"].id == model.id
        assert [s["iteration"] for s in model.snapshots] == [0, 1]
        found = Model.query_models(project_name="vision", model_name="resnet - best")
        assert [m.id for m in found] == [model.id]


def test_explicit_output_models_keep_their_names(task, tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    OutputModel(task=task, name="my-model").update_weights(str(weights), async_enable=False)
    assert [m.name for m in _outputs(task)] == ["my-model"]


def test_labels_set_before_saving_are_given_to_captured_models(task, tmp_path):
    task.set_model_label_enumeration({"background": 0, "person": 1})
    torch.save({"w": 1}, tmp_path / "a.pt")
    [model] = _outputs(task)
    assert model.labels == {"background": 0, "person": 1}


def test_labels_set_after_saving_reach_models_captured_before(task, tmp_path):
    torch.save({"w": 1}, tmp_path / "early.pt")
    torch.save({"w": 1}, tmp_path / "kept.pt")
    outputs = {os.path.basename(m.source): m for m in _outputs(task)}
    assert all(m.labels == {} for m in outputs.values())
    outputs["kept.pt"].publish()  # a published model's labels never change
    task.connect_label_enumeration({"cat": 0, "dog": 1})
    assert outputs["early.pt"].labels == {"cat": 0, "dog": 1}
    assert outputs["kept.pt"].labels == {}
    # a new enumeration replaces the inherited one
    task.set_model_label_enumeration({"cat": 0, "dog": 1, "bird": 2})
    assert outputs["early.pt"].labels == {"cat": 0, "dog": 1, "bird": 2}
    torch.save({"w": 2}, tmp_path / "late.pt")
    late = [m for m in _outputs(task) if m.source.endswith("late.pt")]
    assert late[0].labels == {"cat": 0, "dog": 1, "bird": 2}
