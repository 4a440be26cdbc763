"""OutputModel: weights through the content-addressed store, labels, design, destinations."""

from __future__ import annotations

import os
import zipfile

import pytest

from clearml_hooks import Model, OutputModel, Task


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_needs_a_task():
    assert Task.current_task() is None
    with pytest.raises(ValueError, match="needs a task"):
        OutputModel(name="orphan")


def test_defaults_to_the_current_task(task):
    model = OutputModel(name="m", tags=["a"], comment="hello", framework="pytorch")
    assert model.task == task.id
    assert model.name == "m" and model.tags == ["a"] and model.comment == "hello"
    assert model.framework == "PyTorch"
    assert model.project == "tests"
    assert task.models["output"]["m"] == model


def test_update_weights_stores_a_snapshot_and_keeps_the_file(task, tmp_path):
    weights = _write(tmp_path / "w" / "model.pt", b"weights-1")
    model = OutputModel(task=task, name="net")
    assert model.update_weights(weights_filename=str(weights), iteration=7) is None  # async
    assert OutputModel.wait_for_uploads(timeout=60)
    assert weights.exists(), "the user's file is never deleted by default"
    assert model.url.startswith("file://") and "/blobs/" in model.url
    assert model.framework == "PyTorch"  # guessed from the extension, as ClearML does
    assert model.iteration == 7
    local = model.get_local_copy()
    assert os.path.basename(local) == "model.pt"
    assert open(local, "rb").read() == b"weights-1"
    assert model.get_weights() == local
    # a second snapshot of the same model; the first stays readable by version
    weights.write_bytes(b"weights-2")
    url = model.update_weights(weights_filename=str(weights), iteration=8, async_enable=False)
    assert url == model.url
    assert open(model.get_local_copy(), "rb").read() == b"weights-2"
    assert open(model.get_local_copy(version=1), "rb").read() == b"weights-1"
    assert [s["version"] for s in model.snapshots] == [1, 2]
    model.update_weights(str(weights), target_filename="final.pt", async_enable=False)
    assert os.path.basename(model.get_local_copy()) == "final.pt"


def test_identical_bytes_are_stored_once(task, tmp_path):
    a = _write(tmp_path / "a.bin", b"same bytes")
    b = _write(tmp_path / "b.bin", b"same bytes")
    m1, m2 = OutputModel(name="one"), OutputModel(name="two")
    m1.update_weights(str(a), async_enable=False)
    m2.update_weights(str(b), async_enable=False)
    assert m1.url == m2.url
    blobs = [f for _d, _s, files in os.walk(task.store.blobs.root) for f in files]
    assert len(blobs) == 1


def test_auto_delete_file_only_when_asked(task, tmp_path):
    weights = _write(tmp_path / "tmp.pt", b"temporary")
    model = OutputModel(name="m")
    model.update_weights(str(weights), auto_delete_file=True)
    assert not weights.exists()
    OutputModel.wait_for_uploads(timeout=60)
    assert open(model.get_local_copy(), "rb").read() == b"temporary"


def test_exactly_one_source(task, tmp_path):
    weights = _write(tmp_path / "m.pt", b"x")
    model = OutputModel(name="m")
    with pytest.raises(ValueError, match="exactly one"):
        model.update_weights()
    with pytest.raises(ValueError, match="exactly one"):
        model.update_weights(weights_filename=str(weights), register_uri="s3://bucket/m.pt")
    with pytest.raises(ValueError, match="does not exist"):
        model.update_weights(weights_filename=str(tmp_path / "missing.pt"))
    assert model.snapshots == [] and model.url is None


def test_register_uri_and_its_alias(task, tmp_path):
    model = OutputModel(name="remote")
    url = model.update_weights(register_uri="s3://bucket/models/best.pt", iteration=3)
    assert url == "s3://bucket/models/best.pt" == model.url
    assert model.ready and model.iteration == 3 and model.framework == "PyTorch"
    local = _write(tmp_path / "local.pt", b"registered")
    other = OutputModel(name="alias")
    assert other.update_weights(registered_uri=str(local)) == f"file://{local}"
    assert other.get_local_copy() == str(local)  # registered, not copied
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        other.update_weights(register_uri="ftp://host/x.pt")


def test_directory_is_stored_as_a_package(task, tmp_path):
    folder = tmp_path / "saved_model"
    _write(folder / "saved_model.pb", b"graph")
    _write(folder / "variables" / "variables.index", b"index")
    model = OutputModel(name="tf")
    model.update_weights(str(folder), async_enable=False)
    assert model.is_package and "package" in model.system_tags
    local = model.get_local_copy()
    assert os.path.isdir(local)
    assert open(os.path.join(local, "variables", "variables.index"), "rb").read() == b"index"
    archive = model.get_local_copy(extract_archive=False)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["saved_model.pb", "variables/variables.index"]
    assert folder.exists()


def test_update_weights_package(task, tmp_path):
    a = _write(tmp_path / "pkg" / "a.bin", b"a")
    b = _write(tmp_path / "pkg" / "sub" / "b.bin", b"b")
    model = OutputModel(name="pkg")
    with pytest.raises(ValueError):
        model.update_weights_package()
    model.update_weights_package(weights_filenames=[str(a), str(b)], iteration=2)
    OutputModel.wait_for_uploads(timeout=60)
    local = model.get_local_copy()
    assert sorted(os.listdir(local)) == ["a.bin", "sub"]
    assert model.iteration == 2
    files = model.get_weights_package()
    assert {p.name for p in files} == {"a.bin", "sub"}


def test_labels_and_design(task):
    model = OutputModel(name="m", label_enumeration={"cat": 0, "dog": 1},
                        config_dict={"lr": 0.1, "layers": [1, 2]})
    assert model.labels == {"cat": 0, "dog": 1}
    assert model.config_dict == {"lr": 0.1, "layers": [1, 2]}
    model.update_labels({"a": 1})
    assert model.labels == {"a": 1}
    for bad in ({"a": "1"}, {"a": 1.5}, {"a": True}, {1: 1}, ["a"]):
        with pytest.raises(ValueError):
            model.update_labels(bad)
    assert model.labels == {"a": 1}, "a failed call changes nothing"
    model.update_design(config_text="lr = 0.5\n")
    assert model.config_text == "lr = 0.5\n" and model.config_dict == {"lr": 0.5}
    with pytest.raises(ValueError):
        model.update_design(config_text="x", config_dict={"x": 1})
    model.config_dict = {"b": 2}
    assert model.config_dict == {"b": 2}
    with pytest.raises(ValueError):
        OutputModel(name="bad", label_enumeration={"x": "y"})


def test_task_labels_flow_into_new_output_models(task):
    task.connect_label_enumeration({"bg": 0, "fg": 1})
    assert OutputModel(name="m").labels == {"bg": 0, "fg": 1}


def test_set_upload_destination(task, tmp_path):
    dest = tmp_path / "elsewhere"
    weights = _write(tmp_path / "m.pt", b"to another store")
    model = OutputModel(name="m")
    model.set_upload_destination(str(dest))
    model.update_weights(str(weights))
    assert OutputModel.wait_for_uploads(timeout=60)
    assert model.url.startswith(f"file://{dest}/")
    assert open(model.get_local_copy(), "rb").read() == b"to another store"
    blocker = _write(tmp_path / "a-file", b"")
    with pytest.raises(ValueError, match="cannot write"):
        model.set_upload_destination(str(blocker / "sub"))
    with pytest.raises(ValueError, match="unsupported"):
        model.set_upload_destination("ftp://host/models")
    # upload_uri on update_weights goes the same way
    other = OutputModel(name="o")
    other.update_weights(str(weights), upload_uri=str(tmp_path / "third"), async_enable=False)
    assert other.url.startswith(f"file://{tmp_path / 'third'}/")


def test_published_model_cannot_change(task, tmp_path):
    weights = _write(tmp_path / "m.pt", b"v1")
    model = OutputModel(name="m", label_enumeration={"a": 1})
    model.update_weights(str(weights), async_enable=False)
    model.publish()
    model.publish()  # no-op
    assert model.published
    before = (model.url, len(model.snapshots), model.labels)
    weights.write_bytes(b"v2")
    with pytest.raises(ValueError, match="published"):
        model.update_weights(str(weights))
    with pytest.raises(ValueError, match="published"):
        model.update_weights(register_uri="s3://b/x.pt")
    with pytest.raises(ValueError, match="published"):
        model.update_labels({"b": 2})
    with pytest.raises(ValueError, match="published"):
        model.update_design(config_text="x")
    assert (model.url, len(model.snapshots), model.labels) == before
    staging = task.store.staging_root  # small weights go inline: no staging folder at all
    assert not os.path.exists(staging) or not os.listdir(staging)
    model.tags = ["still", "taggable"]
    assert model.tags == ["still", "taggable"]


def test_connect_names_the_model_on_its_task(task, tmp_path):
    model = OutputModel(task=task, name="registry-name")
    model.connect(task, name="best")
    assert task.models["output"]["best"] == model
    assert task.models["output"][0] == model


def test_base_model_id_reuses_a_model(task, tmp_path):
    first = OutputModel(name="m")
    again = OutputModel(base_model_id=first.id, label_enumeration={"x": 1}, tags=["t"])
    assert again.id == first.id and first.labels == {"x": 1} and first.tags == ["t"]
    with pytest.raises(ValueError, match="no model"):
        OutputModel(base_model_id="0" * 32)


def test_model_api_sees_output_models(task, tmp_path):
    weights = _write(tmp_path / "m.pt", b"x")
    out = OutputModel(name="m")
    out.update_weights(str(weights), async_enable=False)
    again = Model(out.id)
    assert again.url == out.url and again.name == "m"
