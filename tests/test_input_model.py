"""InputModel: by id, by the newest match, import_model / load_model, connect."""

from __future__ import annotations

import os
import tarfile
import time
import zipfile

import pytest

from clearml_hooks import InputModel, Model, OutputModel


def test_by_id(task):
    out = OutputModel(name="m")
    assert InputModel(out.id) == out
    assert InputModel(model_id=out.id).name == "m"
    with pytest.raises(ValueError, match="no model with id"):
        InputModel("f" * 32)


def test_newest_match_without_an_id(task):
    old = OutputModel(name="net", tags=["prod"])
    time.sleep(0.01)
    new = OutputModel(name="net", tags=["prod"])
    OutputModel(name="other", tags=["prod"])
    assert InputModel(name="net") == new
    assert InputModel(name="net", project="tests", tags=["prod"]) == new
    old.publish()
    assert InputModel(name="net", only_published=True) == old
    with pytest.raises(ValueError, match="no model matches"):
        InputModel(name="net", project="elsewhere")
    with pytest.raises(ValueError, match="no model matches"):
        InputModel(name="missing")


def test_import_model_local_path_and_file_url(task, tmp_path):
    path = tmp_path / "resnet.pth"
    path.write_bytes(b"pretrained")
    model = InputModel.import_model(str(path), name="resnet", tags=["imported"],
                                    label_enumeration={"cat": 1}, config_dict={"depth": 50},
                                    comment="from disk")
    assert model.url == f"file://{path}"
    assert (model.name, model.tags, model.labels, model.config_dict, model.comment) == (
        "resnet", ["imported"], {"cat": 1}, {"depth": 50}, "from disk")
    assert model.framework == "PyTorch" and model.project == "tests" and model.ready
    assert model.get_local_copy() == str(path), "registered weights are not copied"
    # the same URL again (as a path or a file:// URL) is the same model
    assert InputModel.import_model(f"file://{path}", name="ignored") == model
    assert InputModel.import_model(str(path)).name == "resnet"
    assert InputModel.load_model(str(path)) == model
    assert InputModel.load_model(str(tmp_path / "unknown.pt")) is None
    published = InputModel.import_model(str(tmp_path / "other.pt"), create_as_published=True,
                                        project="zoo", framework="xgboost")
    assert published.published and published.project == "zoo"
    assert published.framework == "XGBoost"


def test_import_model_remote_schemes(task):
    model = InputModel.import_model("s3://bucket/models/bert.bin", name="bert")
    assert model.url == "s3://bucket/models/bert.bin"
    assert InputModel.import_model("s3://bucket/models/bert.bin") == model
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        InputModel.import_model("ftp://host/model.bin")
    with pytest.raises(ValueError):
        InputModel.import_model("")
    with pytest.raises(ValueError, match="both"):
        InputModel.import_model("s3://bucket/x", config_text="a", config_dict={"a": 1})
    with pytest.raises(ValueError):
        InputModel.import_model("s3://bucket/y", label_enumeration={"a": "b"})
    assert Model.query_models(model_name="bert") == [model]
    assert InputModel.load_model("s3://bucket/y") is None, "a failed import registers nothing"


def test_archived_models_are_not_reused_unless_asked(task, tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"x")
    first = InputModel.import_model(str(path))
    first.archive()
    assert InputModel.load_model(str(path)) is None
    assert InputModel.load_model(str(path), load_archived=True) == first
    assert InputModel.import_model(str(path)) != first


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_imported_package_is_extracted(task, tmp_path, kind):
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"w")
    if kind == "zip":
        archive = tmp_path / "pkg.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(src / "weights.bin", "weights.bin")
    else:
        archive = tmp_path / "pkg.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(src / "weights.bin", "weights.bin")
    model = InputModel.import_model(str(archive), is_package=True)
    assert "package" in model.system_tags
    folder = model.get_local_copy()
    assert os.listdir(folder) == ["weights.bin"]
    assert model.get_local_copy(extract_archive=False) == str(archive)


def test_missing_weights(task, tmp_path):
    model = InputModel.import_model(str(tmp_path / "gone.pt"))
    assert model.get_local_copy() is None
    with pytest.raises(ValueError, match="does not exist"):
        model.get_local_copy(raise_on_error=True)


def test_connect(task, tmp_path):
    path = tmp_path / "base.pt"
    path.write_bytes(b"base")
    model = InputModel.import_model(str(path), label_enumeration={"a": 1, "b": 2})
    model.connect(task, name="backbone")
    assert task.models["input"]["backbone"] == model
    assert task.get_labels_enumeration() == {"a": 1, "b": 2}, "the task takes the model's labels"
    again = InputModel(model.id)
    task.connect(again)  # the same model twice is still one input
    assert len(task.models["input"]) == 1
    assert task.models["input"]["backbone"] == model
    plain = OutputModel(name="another")
    task.connect(Model(plain.id), name="extra")
    assert task.models["input"]["extra"] == plain
