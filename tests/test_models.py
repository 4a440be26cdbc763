"""Model: properties, tags, metadata, publish/archive, remove; the Task side of the registry."""

from __future__ import annotations

import os

import pytest

from clearml_hooks import InputModel, Model, OutputModel


def _stored(task, tmp_path, name: str, data: bytes, **kwargs) -> OutputModel:
    path = tmp_path / f"{name}.pt"
    path.write_bytes(data)
    model = OutputModel(task=task, name=name, **kwargs)
    model.update_weights(str(path), async_enable=False)
    return model


def test_unknown_id_is_a_value_error_naming_it(task):
    with pytest.raises(ValueError, match="no model with id 'deadbeef'"):
        Model("deadbeef")
    with pytest.raises(ValueError, match="deadbeef"):
        Model.remove("deadbeef")


def test_properties(task, tmp_path):
    out = _stored(task, tmp_path, "net", b"abc", tags=["x"], comment="c",
                  label_enumeration={"a": 1}, config_text='{"k": 1}', framework="keras")
    m = Model(out.id)
    assert (m.id, m.name, m.project, m.comment, m.tags) == (out.id, "net", "tests", "c", ["x"])
    assert m.framework == "Keras" and m.labels == {"a": 1}
    assert m.config_text == '{"k": 1}' and m.config_dict == {"k": 1}
    assert m.task == task.id and m.url.startswith("file://")
    assert not m.published and not m.archived and m.system_tags == []
    assert m.iteration is None and m.parent is None
    assert m.created <= m.updated
    m.name, m.comment = "renamed", "new comment"
    assert (m.name, m.comment) == ("renamed", "new comment")


@pytest.mark.parametrize("given,expected", [
    ("pytorch", "PyTorch"), ("PYTORCH", "PyTorch"), ("tensorflow", "TensorFlow"),
    ("keras", "Keras"), ("scikitlearn", "ScikitLearn"), ("xgboost", "XGBoost"),
    ("lightgbm", "LightGBM"), ("catboost", "CatBoost"), ("megengine", "MegEngine"),
    ("fastai", "FastAI"),
])
def test_framework_names_as_clearml_spells_them(task, given, expected):
    assert OutputModel(name="m", framework=given).framework == expected
    assert [m.framework for m in Model.query_models(framework=given.upper())] == [expected]


def test_tags_setter_keeps_the_query_table_in_sync(task):
    m = OutputModel(name="m", tags=["a"])
    m.tags = ["b", "c", "b"]
    assert m.tags == ["b", "c"]
    assert Model.query_models(tags=["a"]) == []
    assert Model.query_models(tags=["c"]) == [m]
    with pytest.raises(ValueError):
        m.tags = ["ok", 3]
    assert m.tags == ["b", "c"]


def test_publish_archive_unarchive(task):
    m = OutputModel(name="m")
    m.publish()
    m.publish()
    assert m.published
    m.archive()
    assert m.archived and "archived" in m.system_tags
    assert Model.query_models() == []
    assert Model.query_models(include_archived=True) == [m]
    m.unarchive()
    assert not m.archived and "archived" not in m.system_tags
    assert Model.query_models() == [m]


def test_metadata(task):
    m = OutputModel(name="m")
    assert m.set_metadata("accuracy", 0.93)
    m.set_metadata("epochs", "12", v_type="int")
    m.set_metadata("layers", [64, 32])
    m.set_metadata("note", "hello")
    m.set_metadata("flag", "true", v_type=bool)
    assert m.get_metadata("accuracy") == "0.93"
    assert m.get_metadata_casted("accuracy") == 0.93
    assert m.get_metadata_casted("epochs") == 12
    assert m.get_metadata_casted("layers") == [64, 32]
    assert m.get_metadata_casted("flag") is True
    assert m.get_metadata("missing") is None and m.get_metadata_casted("missing") is None
    everything = m.get_all_metadata()
    assert everything["epochs"] == {"key": "epochs", "value": "12", "type": "int"}
    assert m.get_all_metadata_casted()["epochs"]["value"] == 12
    m.set_all_metadata({"a": {"value": "1", "type": "int"}, "b": 2.5}, replace=False)
    assert set(m.get_all_metadata()) == {"accuracy", "epochs", "layers", "note", "flag", "a", "b"}
    m.set_all_metadata({"only": {"value": "x", "type": "str"}})
    assert m.get_all_metadata() == {"only": {"key": "only", "value": "x", "type": "str"}}
    with pytest.raises(ValueError):
        m.set_all_metadata({"": 1})
    assert list(m.get_all_metadata()) == ["only"], "a failed call changes nothing"


def test_remove_keeps_bytes_other_snapshots_use(task, tmp_path):
    shared_a = _stored(task, tmp_path, "a", b"shared bytes")
    shared_b = _stored(task, tmp_path, "b", b"shared bytes")
    alone = _stored(task, tmp_path, "c", b"unique bytes")
    blobs = task.store.blobs
    shared_sha = shared_a.snapshots[0]["digest"]
    alone_sha = alone.snapshots[0]["digest"]
    assert Model.remove(shared_a) is True
    assert blobs.exists(shared_sha), "still used by model b"
    assert open(shared_b.get_local_copy(force_download=True), "rb").read() == b"shared bytes"
    assert Model.remove(alone.id) is True
    assert not blobs.exists(alone_sha)
    with pytest.raises(ValueError):
        Model(alone.id)
    assert Model.query_models() == [shared_b]
    assert Model.remove(shared_b, delete_weights_file=False)
    assert blobs.exists(shared_sha)


def test_remove_a_model_another_task_uses_needs_force(task, tmp_path):
    from clearml_hooks.store import model_ops

    m = _stored(task, tmp_path, "m", b"in use")
    other_task = os.urandom(16).hex()
    task.store.catalog.create_task(other_task, "tests", "consumer", "training")
    task.store.catalog.link_model(other_task, m.id, "input")
    assert model_ops.users_of(task.store.catalog, m.id) == [other_task]
    assert Model.remove(m) is False
    with pytest.raises(ValueError, match="force"):
        Model.remove(m, raise_on_errors=True)
    assert Model(m.id).name == "m"
    assert Model.remove(m, force=True) is True


def test_imported_weights_are_never_deleted(task, tmp_path):
    path = tmp_path / "mine.pt"
    path.write_bytes(b"the user's own file")
    m = InputModel.import_model(str(path))
    assert Model.remove(m)
    assert path.exists()


# -- the Task side ---------------------------------------------------------------------------------

def test_task_label_enumeration(task):
    assert task.get_labels_enumeration() == {}
    assert task.connect_label_enumeration({"a": 0, "b": 1}) == {"a": 0, "b": 1}
    assert task.get_labels_enumeration() == {"a": 0, "b": 1}
    with pytest.raises(ValueError):
        task.connect_label_enumeration({"a": "zero"})
    assert task.get_labels_enumeration() == {"a": 0, "b": 1}


def test_update_output_model(task, tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"v1")
    assert task.update_output_model(str(path), name="best", tags=["t"], comment="c",
                                    iteration=5) is None
    task.flush(wait_for_uploads=True)
    best = task.models["output"]["best"]
    assert best.name == f"{task.name} - best" and best.tags == ["t"] and best.iteration == 5
    assert open(best.get_local_copy(), "rb").read() == b"v1"
    assert path.exists()
    # the same name again adds a snapshot to the same model
    path.write_bytes(b"v2")
    task.update_output_model(str(path), name="best", iteration=6, async_enable=False)
    assert len(task.models["output"]) == 1
    assert open(task.models["output"]["best"].get_local_copy(), "rb").read() == b"v2"
    assert task.update_output_model("s3://bucket/final.pt", name="final",
                                    model_name="final-model") == "s3://bucket/final.pt"
    final = task.models["output"]["final"]
    assert final.name == "final-model" and final.url == "s3://bucket/final.pt"


def test_task_models_by_position_and_name(task, tmp_path):
    a = OutputModel(name="first")
    b = OutputModel(name="second")
    src = tmp_path / "in.pt"
    src.write_bytes(b"input")
    inp = InputModel.import_model(str(src), name="pretrained")
    task.connect(inp, name="backbone")
    models = task.models
    assert models["output"][0] == a and models["output"][1] == b
    assert models["output"]["second"] == b
    assert models["input"]["backbone"] == inp and models["input"][0] == inp
    with pytest.raises(KeyError):
        models["output"]["nope"]
    # an output model is trained from the task's input model
    assert OutputModel(name="child").parent == inp.id


def test_task_connect_other_objects_are_returned_unchanged(task):
    params = {"lr": 0.1}
    assert task.connect(params) is params
