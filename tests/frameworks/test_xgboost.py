"""XGBoost: Booster and scikit-learn wrapper save/load, ``Booster(model_file=...)``, real XGBoost.

Runs on xgboost 1.7 (legacy binary format still written) and the newest ``xgboost-cpu`` (3.x).
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import xgboost as xgb
import xgboost.core

from tests.frameworks import common
from tests.frameworks.common import (
    file_name,
    hooked_loads,
    inputs,
    outputs,
    run_training_script,
    stored_bytes,
)

XGB_MAJOR = int(xgb.__version__.split(".")[0])
ORIGINAL_INIT = xgboost.core.Booster.__dict__["__init__"]
ORIGINAL_SAVE = xgboost.core.Booster.__dict__["save_model"]

rng = np.random.default_rng(0)
X = rng.normal(size=(300, 6))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)


@pytest.fixture(scope="module")
def booster():
    return xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(X, label=Y), 5)


@pytest.fixture(scope="module")
def classifier():
    return xgb.XGBClassifier(n_estimators=5, max_depth=3).fit(X, Y)


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


start = functools.partial(common.start, "xgboost")
assert_one_output = functools.partial(common.assert_one_output,
                                      framework="XGBoost", one_snapshot=True)


# -- Booster ------------------------------------------------------------------------------------

# .bin / .model: the legacy binary format in 1.7, UBJSON (with a warning) in 2.x / 3.x
@pytest.mark.parametrize("name, magic", [("model.json", b"{"), ("model.ubj", b"{"),
                                         ("model.bin", b"binf" if XGB_MAJOR < 2 else b"{")])
def test_booster_save_model(tmp_path, booster, name, magic):
    task = start(tmp_path)
    path = tmp_path / name
    with quiet():  # 2.x / 3.x warn about the UBJSON default for other suffixes
        assert booster.save_model(str(path)) is None
    assert path.read_bytes().startswith(magic)
    assert_one_output(task, path)


def test_booster_save_model_to_pathlib_path(tmp_path, booster):
    task = start(tmp_path)
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "model.json"
    booster.save_model(path)
    assert_one_output(task, path)  # the full path, not its base name


def test_booster_save_model_expands_the_home_directory(tmp_path, booster, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    task = start(tmp_path, {"xgboost": str(home / "*.json")})  # the filter sees the real path
    booster.save_model("~/model.json")
    m = assert_one_output(task, home / "model.json")
    task.set_last_iteration(1)
    booster[:2].save_model("~/model.json")  # an overwrite in place: the first snapshot is kept
    assert task.flush(wait_for_uploads=True)
    assert [s["iteration"] for s in m.snapshots] == [None, 1]
    assert stored_bytes(m) == (home / "model.json").read_bytes()
    first = Path(m.get_local_copy(raise_on_error=True, version=1)).read_bytes()
    assert first != (home / "model.json").read_bytes()
    xgb.Booster(model_file="~/model.json")
    assert inputs(task) == [m]


def test_booster_load_model(tmp_path, booster):
    path = tmp_path / "model.json"
    booster.save_model(path)
    task = start(tmp_path)
    fresh = xgb.Booster()
    assert fresh.load_model(path) is None
    np.testing.assert_allclose(fresh.predict(xgb.DMatrix(X)), booster.predict(xgb.DMatrix(X)))
    [inp] = inputs(task)
    assert (file_name(inp), inp.framework) == ("model.json", "XGBoost")


def test_booster_constructor_with_model_file_is_one_load(tmp_path, booster, monkeypatch):
    path = tmp_path / "model.ubj"
    booster.save_model(str(path))
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    loaded = xgb.Booster(model_file=str(path))
    assert isinstance(loaded, xgb.Booster)
    assert loaded.num_boosted_rounds() == 5
    [inp] = inputs(task)
    assert file_name(inp) == "model.ubj"
    assert loads == [str(path)]  # not again for the load_model inside __init__


def test_booster_stays_a_class(tmp_path, booster):
    start(tmp_path)
    assert isinstance(xgb.Booster, type)

    class MyBooster(xgb.Booster):
        pass

    assert isinstance(MyBooster(), xgb.Booster)
    assert xgboost.core.Booster.__dict__["__init__"] is not ORIGINAL_INIT  # hooked...
    assert pickle.loads(pickle.dumps(booster)).num_boosted_rounds() == 5  # ...and still pickles


def test_in_memory_models_are_not_loads(tmp_path, booster):
    task = start(tmp_path)
    copy = xgb.Booster(model_file=booster)  # a copy of another Booster
    raw = booster.save_raw()
    fresh = xgb.Booster()
    fresh.load_model(raw)  # a bytearray
    assert copy.num_boosted_rounds() == fresh.num_boosted_rounds() == 5
    assert inputs(task) == []
    assert outputs(task) == []


def test_train_resuming_from_a_file_is_a_load(tmp_path, booster, monkeypatch):
    path = tmp_path / "model.json"
    booster.save_model(path)
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    resumed = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(X, label=Y), 3,
                        xgb_model=str(path))
    assert resumed.num_boosted_rounds() == 8
    assert [file_name(m) for m in inputs(task)] == ["model.json"]
    assert loads == [str(path)]


# -- scikit-learn wrappers -----------------------------------------------------------------------


def test_sklearn_wrapper_save_model_is_one_snapshot(tmp_path, classifier):
    task = start(tmp_path)
    path = tmp_path / "classifier.json"
    classifier.save_model(path)  # XGBModel.save_model -> Booster.save_model inside
    assert_one_output(task, path)
    assert task.capture_stats["saves"] == 1


@pytest.mark.parametrize("cls", [xgb.XGBClassifier, xgb.XGBRegressor, xgb.XGBRanker])
def test_sklearn_wrapper_load_model_is_one_load(tmp_path, classifier, cls, monkeypatch):
    path = tmp_path / "model.json"
    classifier.get_booster().save_model(path)
    task = start(tmp_path)
    loads = hooked_loads(task, monkeypatch)
    model = cls()
    with quiet():  # loading a classifier's booster into another wrapper may warn
        model.load_model(path)
    assert model.get_booster().num_boosted_rounds() == 5
    [inp] = inputs(task)
    assert file_name(inp) == "model.json"
    assert loads == [str(path)]  # XGBModel.load_model -> Booster() -> load_model: one load


def test_joblib_dump_of_an_xgboost_model_is_framework_xgboost(tmp_path, classifier):
    task = start(tmp_path)
    joblib.dump(classifier, tmp_path / "classifier.joblib")
    joblib.load(tmp_path / "classifier.joblib")
    [out] = outputs(task)
    assert out.framework == "XGBoost"
    [inp] = inputs(task)
    assert inp == out and inp.framework == "XGBoost"


# -- errors, filters, patching --------------------------------------------------------------------


def test_a_failing_save_raises_xgboosts_error(tmp_path, booster):
    task = start(tmp_path)
    with pytest.raises(xgb.core.XGBoostError):
        booster.save_model(str(tmp_path / "missing-dir" / "model.json"))
    with pytest.raises(TypeError):
        booster.save_model(123)
    assert outputs(task) == []
    assert task.capture_stats["agent_errors"] == 0


def test_wildcard_filter(tmp_path, booster):
    task = start(tmp_path, {"xgboost": "*.json"})
    booster.save_model(tmp_path / "keep.json")
    booster.save_model(tmp_path / "drop.ubj")
    xgb.Booster(model_file=tmp_path / "drop.ubj")
    assert [file_name(m) for m in outputs(task)] == ["keep.json"]
    assert inputs(task) == []


def test_disabled(tmp_path, booster):
    task = start(tmp_path, {"xgboost": False})
    booster.save_model(tmp_path / "model.json")
    xgb.Booster(model_file=tmp_path / "model.json")
    assert outputs(task) == [] and inputs(task) == []
    assert xgboost.core.Booster.__dict__["save_model"] is ORIGINAL_SAVE


def test_uninstrument_restores_the_class(tmp_path):
    task = start(tmp_path)
    assert xgboost.core.Booster.__dict__["save_model"] is not ORIGINAL_SAVE
    task.close()
    assert xgboost.core.Booster.__dict__["save_model"] is ORIGINAL_SAVE
    assert xgboost.core.Booster.__dict__["__init__"] is ORIGINAL_INIT


# -- the training script ------------------------------------------------------------------------


def test_training_script_end_to_end(tmp_path):
    out, models = run_training_script("xgboost", tmp_path,
                                      expect="resumed to 16 rounds", query_sees_outputs=True)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(checkpoints) >= 2
    assert set(models) == {("output", n) for n in (*checkpoints, "model.json", "classifier.ubj")} \
        | {("input", "model.json")}  # model.bin is filtered out
    for (direction, name), model in models.items():
        assert model.framework == "XGBoost"
        if direction == "output":
            local = out / name if name in ("model.json", "classifier.ubj") else out / "checkpoints" / name
            assert stored_bytes(model) == local.read_bytes()
    assert models["input", "model.json"] == models["output", "model.json"]
