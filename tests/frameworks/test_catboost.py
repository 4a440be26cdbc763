"""CatBoost: ``save_model`` / ``load_model`` of every model class in every format, real CatBoost.

Runs on catboost 1.2.2 and the newest 1.2.x. Which formats load back: cbm, json, onnx and
coreml; cpp, python and pmml are export-only; pmml does not support multiclass models.
"""

from __future__ import annotations

import functools
import inspect

import catboost
import catboost.core
import numpy as np
import pytest
from catboost import CatBoost, CatBoostClassifier, CatBoostError, CatBoostRanker, CatBoostRegressor

from tests.frameworks import common
from tests.frameworks.common import (
    file_name,
    hooked_loads,
    inputs,
    outputs,
    run_training_script,
    stored_bytes,
)

ORIGINAL_SAVE = catboost.core.CatBoost.__dict__["save_model"]
ORIGINAL_LOAD = catboost.core.CatBoost.__dict__["load_model"]

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 5))
Y = (X[:, 0] > 0).astype(int)
GROUPS = np.repeat(np.arange(20), 10)
FORMATS = ["cbm", "json", "onnx", "cpp", "python", "coreml", "pmml"]
LOADABLE = ["cbm", "json", "onnx", "coreml"]


def fitted(kind: str):
    common = {"iterations": 5, "depth": 3, "verbose": 0, "allow_writing_files": False}
    if kind == "CatBoost":
        return CatBoost({"loss_function": "Logloss", **common}).fit(X, Y)
    if kind == "CatBoostClassifier":
        return CatBoostClassifier(**common).fit(X, Y)
    if kind == "CatBoostRegressor":
        return CatBoostRegressor(**common).fit(X, X[:, 1])
    if kind == "CatBoostRanker":
        return CatBoostRanker(**common).fit(X, X[:, 1], group_id=GROUPS)
    if kind == "multiclass":
        return CatBoostClassifier(**common).fit(X, (X[:, 0] * 2).astype(int) % 3)
    raise ValueError(kind)


@pytest.fixture(scope="module")
def classifier():
    return fitted("CatBoostClassifier")


start = functools.partial(common.start, "catboost")
assert_one_output = functools.partial(common.assert_one_output,
                                      framework="CatBoost", one_snapshot=True)


# -- save ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["CatBoost", "CatBoostClassifier", "CatBoostRegressor",
                                  "CatBoostRanker"])
def test_every_model_class_saves(tmp_path, kind):
    model = fitted(kind)
    task = start(tmp_path)
    path = tmp_path / f"{kind}.cbm"
    assert model.save_model(str(path)) is None
    assert_one_output(task, path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_saves(tmp_path, classifier, fmt):
    task = start(tmp_path)
    path = tmp_path / f"model.{fmt}"
    classifier.save_model(path, format=fmt)  # a pathlib.Path
    assert_one_output(task, path)


def test_each_save_of_a_path_is_a_snapshot_of_one_model(tmp_path, classifier):
    task = start(tmp_path)
    path = tmp_path / "checkpoint.cbm"
    for i in range(3):
        task.set_last_iteration(i)
        classifier.save_model(path)
    [m] = outputs(task)
    assert [s["iteration"] for s in m.snapshots] == [0, 1, 2]


def test_failing_saves_raise_catboosts_error_and_capture_nothing(tmp_path):
    task = start(tmp_path)
    with pytest.raises(CatBoostError):
        fitted("multiclass").save_model(str(tmp_path / "multi.pmml"), format="pmml")
    with pytest.raises(CatBoostError):
        CatBoostClassifier().save_model(str(tmp_path / "unfitted.cbm"))
    assert outputs(task) == []
    assert task.capture_stats["agent_errors"] == 0


# -- load ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", LOADABLE)
def test_load_model_registers_an_input(tmp_path, classifier, fmt):
    path = tmp_path / f"model.{fmt}"
    classifier.save_model(str(path), format=fmt)
    task = start(tmp_path)
    model = CatBoostClassifier()
    assert model.load_model(path, format=fmt) is model  # CatBoost's return value: self
    [inp] = inputs(task)
    assert (file_name(inp), inp.framework) == (path.name, "CatBoost")


def test_load_from_a_named_stream_and_from_a_blob(tmp_path, classifier, monkeypatch):
    path = tmp_path / "model.cbm"
    classifier.save_model(str(path))
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    with open(path, "rb") as f:
        from_stream = CatBoostClassifier().load_model(stream=f)
    from_blob = CatBoostClassifier().load_model(blob=path.read_bytes())  # in memory: not a file
    np.testing.assert_array_equal(from_stream.predict(X), from_blob.predict(X))
    assert loads == [str(path)]
    assert [file_name(m) for m in inputs(task)] == ["model.cbm"]


def test_fit_from_an_init_model_file_is_one_load(tmp_path, classifier, monkeypatch):
    path = tmp_path / "init.cbm"
    classifier.save_model(str(path))
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    model = CatBoostClassifier(iterations=3, verbose=0, allow_writing_files=False)
    model.fit(X, Y, init_model=str(path))
    assert model.tree_count_ == 8
    assert loads == [str(path)]
    assert outputs(task) == []


def test_save_then_load_links_the_same_model(tmp_path, classifier):
    task = start(tmp_path)
    path = tmp_path / "model.cbm"
    classifier.save_model(path)
    CatBoostRegressor().load_model(path)
    [out], [inp] = outputs(task), inputs(task)
    assert inp == out


def test_catboosts_own_scratch_models_are_not_captured(tmp_path):
    task = start(tmp_path)
    samples = catboost.sample_gaussian_process(X, X[:, 1], samples=2, posterior_iterations=5,
                                               prior_iterations=3, depth=2)
    assert len(samples) == 2
    assert outputs(task) == [] and inputs(task) == []


# -- filters, patching --------------------------------------------------------------------------


def test_wildcard_filter(tmp_path, classifier):
    task = start(tmp_path, {"catboost": ["*.cbm", "exports/*.onnx"]})
    (tmp_path / "exports").mkdir()
    classifier.save_model(str(tmp_path / "keep.cbm"))
    classifier.save_model(str(tmp_path / "exports" / "keep.onnx"), format="onnx")
    classifier.save_model(str(tmp_path / "drop.onnx"), format="onnx")
    classifier.save_model(str(tmp_path / "drop.json"), format="json")
    CatBoost().load_model(str(tmp_path / "drop.json"), format="json")
    assert sorted(m.source for m in outputs(task)) == [
        str(tmp_path / "exports" / "keep.onnx"), str(tmp_path / "keep.cbm")]
    assert inputs(task) == []


def test_disabled(tmp_path, classifier):
    task = start(tmp_path, {"catboost": False})
    classifier.save_model(str(tmp_path / "model.cbm"))
    CatBoost().load_model(str(tmp_path / "model.cbm"))
    assert outputs(task) == [] and inputs(task) == []
    assert catboost.core.CatBoost.__dict__["save_model"] is ORIGINAL_SAVE


def test_subclasses_inherit_the_hook_and_uninstrument_restores(tmp_path):
    task = start(tmp_path)
    for cls in (CatBoostClassifier, CatBoostRegressor, CatBoostRanker):
        assert "save_model" not in cls.__dict__
        assert inspect.getattr_static(cls, "save_model") is CatBoost.__dict__["save_model"]
    assert CatBoost.__dict__["save_model"] is not ORIGINAL_SAVE
    task.close()
    assert CatBoost.__dict__["save_model"] is ORIGINAL_SAVE
    assert CatBoost.__dict__["load_model"] is ORIGINAL_LOAD


# -- the training script ------------------------------------------------------------------------


def test_training_script_end_to_end(tmp_path):
    out, models = run_training_script("catboost", tmp_path,
                                      expect="after 60 trees", query_sees_outputs=True)
    assert set(models) == {("output", "checkpoint.cbm"), ("output", "model.cbm"),
                           ("output", "model.onnx"), ("input", "checkpoint.cbm"),
                           ("input", "model.cbm")}  # model.json is filtered out
    assert {m.framework for m in models.values()} == {"CatBoost"}
    ckpt = models["output", "checkpoint.cbm"]
    assert [s["iteration"] for s in ckpt.snapshots] == [20, 40, 60]
    for name in ("checkpoint.cbm", "model.cbm", "model.onnx"):
        assert stored_bytes(models["output", name]) == (out / name).read_bytes()
    assert models["input", "model.cbm"] == models["output", "model.cbm"]
    assert models["input", "checkpoint.cbm"] == ckpt  # resumed from its own checkpoint
