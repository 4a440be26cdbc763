"""LightGBM: ``Booster.save_model``, ``Booster(model_file=...)``, ``init_model``, real LightGBM.

Runs on lightgbm 3.3 (scikit-learn 1.3) and 4.x. ``lgb.Booster`` must stay a class: the load
through the constructor is a hook on ``Booster.__init__``, not a replacement of the class.
"""

from __future__ import annotations

import copy
import functools
import pickle

import joblib
import lightgbm as lgb
import lightgbm.basic
import numpy as np
import pytest

from tests.frameworks import common
from tests.frameworks.common import (
    file_name,
    hooked_loads,
    inputs,
    outputs,
    run_training_script,
    stored_bytes,
)

LGB_MAJOR = int(lgb.__version__.split(".")[0])
ORIGINAL_INIT = lightgbm.basic.Booster.__dict__["__init__"]
ORIGINAL_SAVE = lightgbm.basic.Booster.__dict__["save_model"]
PARAMS = {"objective": "binary", "num_leaves": 7, "verbose": -1}

rng = np.random.default_rng(0)
X = rng.normal(size=(300, 6))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)


@pytest.fixture(scope="module")
def booster():
    return lgb.train(PARAMS, lgb.Dataset(X, label=Y), 5)


@pytest.fixture(scope="module")
def classifier():
    return lgb.LGBMClassifier(n_estimators=5, num_leaves=7, verbose=-1).fit(X, Y)


start = functools.partial(common.start, "lightgbm")
assert_one_output = functools.partial(common.assert_one_output,
                                      framework="LightGBM", one_snapshot=True)


# -- save ---------------------------------------------------------------------------------------


def test_booster_save_model(tmp_path, booster):
    task = start(tmp_path)
    path = tmp_path / "model.txt"
    assert booster.save_model(str(path)) is booster  # LightGBM's return value: self
    assert path.read_text().startswith("tree")
    assert_one_output(task, path)


def test_booster_save_model_to_pathlib_path(tmp_path, booster):
    task = start(tmp_path)
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "model.txt"
    booster.save_model(path, num_iteration=3)
    assert_one_output(task, path)


def test_sklearn_model_booster_save_model(tmp_path, classifier):
    task = start(tmp_path)
    path = tmp_path / "classifier.txt"
    classifier.booster_.save_model(path)
    assert_one_output(task, path)


def test_each_save_of_a_path_is_a_snapshot_of_one_model(tmp_path, booster):
    task = start(tmp_path)
    path = tmp_path / "checkpoint.txt"
    for i in range(3):
        task.set_last_iteration(i)
        booster.save_model(path)
    [m] = outputs(task)
    assert [s["iteration"] for s in m.snapshots] == [0, 1, 2]


def test_joblib_dump_of_a_lightgbm_model_is_framework_lightgbm(tmp_path, classifier):
    task = start(tmp_path)
    joblib.dump(classifier, tmp_path / "classifier.joblib")
    [out] = outputs(task)
    assert out.framework == "LightGBM"


def test_a_failing_save_raises_lightgbms_error(tmp_path, booster):
    task = start(tmp_path)
    with pytest.raises(lgb.basic.LightGBMError):
        booster.save_model(str(tmp_path / "missing-dir" / "model.txt"))
    assert outputs(task) == []
    assert task.capture_stats["agent_errors"] == 0


# -- load ---------------------------------------------------------------------------------------


def test_booster_constructor_with_model_file_is_one_load(tmp_path, booster, monkeypatch):
    path = tmp_path / "model.txt"
    booster.save_model(path)
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    loaded = lgb.Booster(model_file=path)
    np.testing.assert_allclose(loaded.predict(X), booster.predict(X))
    assert loads == [str(path)]
    [inp] = inputs(task)
    assert (file_name(inp), inp.framework) == ("model.txt", "LightGBM")


def test_booster_stays_a_class(tmp_path, booster):
    path = tmp_path / "model.txt"
    booster.save_model(path)
    task = start(tmp_path)
    assert isinstance(lgb.Booster, type)
    assert lgb.Booster is lightgbm.basic.Booster

    class MyBooster(lgb.Booster):
        pass

    mine = MyBooster(model_file=str(path))
    assert isinstance(mine, lgb.Booster) and type(mine) is MyBooster
    assert [file_name(m) for m in inputs(task)] == ["model.txt"]
    assert lightgbm.basic.Booster.__dict__["__init__"] is not ORIGINAL_INIT


def test_in_memory_boosters_are_not_loads(tmp_path, booster):
    task = start(tmp_path)
    from_string = lgb.Booster(model_str=booster.model_to_string())
    clones = [copy.deepcopy(booster), pickle.loads(pickle.dumps(booster)), from_string]
    for clone in clones:
        np.testing.assert_allclose(clone.predict(X), booster.predict(X))
    assert inputs(task) == [] and outputs(task) == []


def test_train_from_an_init_model_file_is_one_load(tmp_path, booster, monkeypatch):
    path = tmp_path / "init.txt"
    booster.save_model(path)
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    resumed = lgb.train(PARAMS, lgb.Dataset(X, label=Y), 3, init_model=str(path))
    assert resumed.current_iteration() == 8
    assert loads == [str(path)]
    assert outputs(task) == []


def test_sklearn_fit_from_an_init_model_file(tmp_path, booster, monkeypatch):
    path = tmp_path / "init.txt"
    booster.save_model(path)
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    clf = lgb.LGBMClassifier(n_estimators=3, num_leaves=7, verbose=-1).fit(X, Y, init_model=path)
    assert clf.booster_.current_iteration() == 8
    assert loads == [str(path)]


def test_save_then_load_links_the_same_model(tmp_path, booster):
    task = start(tmp_path)
    path = tmp_path / "model.txt"
    booster.save_model(path)
    lgb.Booster(model_file=str(path))
    [out], [inp] = outputs(task), inputs(task)
    assert inp == out


@pytest.mark.skipif(LGB_MAJOR < 4, reason="CVBooster.save_model / model_file are new in LightGBM 4")
def test_cvbooster_save_and_load(tmp_path, monkeypatch):
    cv = lgb.cv(PARAMS, lgb.Dataset(X, label=Y), 3, nfold=2, return_cvbooster=True)
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    path = tmp_path / "cv.json"
    cv["cvbooster"].save_model(path)
    assert_one_output(task, path)  # one snapshot: not once per fold
    loaded = lgb.CVBooster(model_file=path)
    assert len(loaded.boosters) == 2
    assert loads == [str(path)]


# -- filters, patching --------------------------------------------------------------------------


def test_wildcard_filter(tmp_path, booster):
    task = start(tmp_path, {"lightgbm": "final*"})
    booster.save_model(tmp_path / "final.txt")
    booster.save_model(tmp_path / "checkpoint.txt")
    lgb.Booster(model_file=str(tmp_path / "checkpoint.txt"))
    assert [file_name(m) for m in outputs(task)] == ["final.txt"]
    assert inputs(task) == []


def test_disabled(tmp_path, booster):
    task = start(tmp_path, {"lightgbm": False})
    booster.save_model(tmp_path / "model.txt")
    lgb.Booster(model_file=str(tmp_path / "model.txt"))
    assert outputs(task) == [] and inputs(task) == []
    assert lightgbm.basic.Booster.__dict__["__init__"] is ORIGINAL_INIT


def test_uninstrument_restores_the_class(tmp_path):
    task = start(tmp_path)
    assert lightgbm.basic.Booster.__dict__["save_model"] is not ORIGINAL_SAVE
    task.close()
    assert lightgbm.basic.Booster.__dict__["save_model"] is ORIGINAL_SAVE
    assert lightgbm.basic.Booster.__dict__["__init__"] is ORIGINAL_INIT


# -- the training script ------------------------------------------------------------------------


def test_training_script_end_to_end(tmp_path):
    out, models = run_training_script("lightgbm", tmp_path,
                                      expect="after 30 rounds", query_sees_outputs=True)
    assert set(models) == {
        ("output", "checkpoint.txt"), ("output", "model.txt"), ("output", "classifier.txt"),
        ("output", "classifier.joblib"), ("input", "checkpoint.txt"), ("input", "model.txt"),
    }  # model.lgb is filtered out
    assert {m.framework for m in models.values()} == {"LightGBM"}
    ckpt = models["output", "checkpoint.txt"]
    assert [s["iteration"] for s in ckpt.snapshots] == [10, 20, 30]
    for name in ("checkpoint.txt", "model.txt", "classifier.txt", "classifier.joblib"):
        assert stored_bytes(models["output", name]) == (out / name).read_bytes()
    assert models["input", "model.txt"] == models["output", "model.txt"]
    assert models["input", "checkpoint.txt"] == ckpt  # resumed from its own checkpoint
