"""Standalone Keras 3 on the torch backend: every save / load captured once, end to end.

Runs on keras 3.0.5 and the newest keras (tox sets ``KERAS_BACKEND=torch``). Features that only
newer Keras 3 has (``keras.saving.save_weights``, ``zipped=False``, sharded weights) are tested
when present.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import wrapt  # noqa: E402

from clearml_hooks import Model  # noqa: E402
from tests.frameworks import common  # noqa: E402
from tests.frameworks.common import (  # noqa: E402
    assert_stored,
    file_name,
    inputs,
    outputs,
    run_training_script,
    tree,
)

X = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
Y = X.sum(axis=1, keepdims=True)
HAS_ZIPPED = "zipped" in inspect.signature(keras.Model.save).parameters
HAS_SHARDING = "max_shard_size" in inspect.signature(keras.Model.save_weights).parameters


def make_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss=keras.losses.MeanSquaredError())
    return model


@pytest.fixture
def model():
    return make_model()


start = functools.partial(common.start, "keras")
task = common.task_fixture(start)


def only(models: list[Model], name: str) -> Model:
    return common.only(models, "Keras", name)


def test_runs_on_the_torch_backend():
    assert keras.backend.backend() == "torch"
    assert keras.__version__.startswith("3.")


@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "pathlib"])
@pytest.mark.parametrize("name", ["m.keras", "m.h5"])
def test_model_save_is_one_keras_snapshot(task, model, tmp_path, name, as_path):
    target = tmp_path / name
    assert model.save(as_path(target)) is None
    m = only(outputs(task), name)  # Keras, not PyTorch: the torch backend does not torch.save
    assert len(m.snapshots) == 1
    assert_stored(m, target)
    assert task.capture_stats["saves"] == 1


def test_save_model_spellings_and_load_model(task, model, tmp_path):
    keras.saving.save_model(model, tmp_path / "a.keras")
    keras.models.save_model(model, str(tmp_path / "b.keras"))
    out = outputs(task)
    assert sorted(file_name(m) for m in out) == ["a.keras", "b.keras"]
    assert all(len(m.snapshots) == 1 and m.framework == "Keras" for m in out)
    for load in (keras.saving.load_model, keras.models.load_model):
        loaded = load(str(tmp_path / "a.keras"))
        np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0),
                                   rtol=1e-5)
    [a] = [m for m in out if file_name(m) == "a.keras"]
    assert inputs(task) == [a]  # the same file loaded twice is one input
    assert task.capture_stats["loads"] == 1


def test_save_weights_and_load_weights(task, model, tmp_path):
    target = tmp_path / "w.weights.h5"
    assert model.save_weights(target) is None
    saved = only(outputs(task), "w.weights.h5")
    assert_stored(saved, target)
    fresh = make_model()
    fresh.load_weights(str(target))
    np.testing.assert_allclose(fresh.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-5)
    assert inputs(task) == [saved]


@pytest.mark.skipif(not hasattr(keras.saving, "save_weights"), reason="newer Keras 3 only")
def test_public_save_weights_load_weights(task, model, tmp_path):
    target = tmp_path / "p.weights.h5"
    keras.saving.save_weights(model, target)
    saved = only(outputs(task), "p.weights.h5")
    assert len(saved.snapshots) == 1
    keras.saving.load_weights(make_model(), target)
    assert inputs(task) == [saved]


def test_public_spellings_share_the_wrapper_and_are_restored(tmp_path):
    from keras.src.saving import saving_api

    original = saving_api.save_model
    task = start(tmp_path)
    try:
        assert isinstance(saving_api.save_model, wrapt.FunctionWrapper)
        assert keras.saving.save_model is saving_api.save_model
        assert keras.models.save_model is saving_api.save_model
        assert keras.models.load_model is keras.saving.load_model is saving_api.load_model
    finally:
        task.close()
    assert saving_api.save_model is keras.saving.save_model is keras.models.save_model is original
    assert not isinstance(keras.Model.__dict__["save"], wrapt.FunctionWrapper)


def test_model_checkpoint_full_and_weights_only(task, model, tmp_path):
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "ck" / "e{epoch:02d}.keras")),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "ck" / "last.weights.h5"),
                                        save_weights_only=True),
    ]
    model.fit(X, Y, epochs=3, batch_size=16, verbose=0, callbacks=callbacks)
    out = {file_name(m): m for m in outputs(task)}
    assert sorted(out) == ["e01.keras", "e02.keras", "e03.keras", "last.weights.h5"]
    for epoch in (1, 2, 3):
        m = out[f"e{epoch:02d}.keras"]
        assert (m.framework, m.iteration, len(m.snapshots)) == ("Keras", epoch, 1)
    assert [s["iteration"] for s in out["last.weights.h5"].snapshots] == [1, 2, 3]
    assert_stored(out["last.weights.h5"], tmp_path / "ck" / "last.weights.h5")
    assert task.capture_stats["saves"] == 6


def test_save_without_extension_raises_untouched(task, model, tmp_path):
    with pytest.raises(ValueError, match="Invalid filepath extension"):
        model.save(str(tmp_path / "noext"))
    assert not (tmp_path / "noext").exists()
    assert outputs(task) == []
    assert task.capture_stats["agent_errors"] == 0


@pytest.mark.skipif(not HAS_ZIPPED, reason="zipped=False is newer Keras 3")
def test_unzipped_model_directory(task, model, tmp_path):
    target = tmp_path / "unzipped"
    model.save(target, zipped=False)
    assert target.is_dir()
    m = only(outputs(task), "unzipped")
    assert m.snapshots[0]["kind"] == "dir"
    assert_stored(m, target)


@pytest.mark.skipif(not HAS_SHARDING, reason="sharded weights are newer Keras 3")
def test_sharded_weights_are_one_snapshot(task, tmp_path):
    big = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512), keras.layers.Dense(512),
                            keras.layers.Dense(1)])
    folder = tmp_path / "sharded"
    folder.mkdir()
    big.save_weights(folder / "big.weights.json", max_shard_size=0.001)
    written = sorted(p.name for p in folder.iterdir())
    assert len(written) > 2  # the index and several shards
    m = only(outputs(task), "big.weights.json")
    assert m.snapshots[0]["kind"] == "files"
    assert tree(m.get_local_copy()).keys() <= set(written)
    stored = Path(m.get_local_copy()).parent
    assert tree(stored) == tree(folder)
    big.load_weights(folder / "big.weights.json")
    assert inputs(task) == [m]


@pytest.mark.parametrize("frameworks, expected", [
    ({"keras": "*.keras"}, ["a.keras"]),
    ({"tensorflow": "*.h5"}, ["b.h5"]),  # the tensorflow key filters Keras saves too...
    ({"keras": "*.keras", "tensorflow": "*.h5"}, ["a.keras"]),  # ...unless keras is given
    ({"keras": False}, []),
    ({"pytorch": False}, ["a.keras", "b.h5"]),
], ids=["keras", "tensorflow", "keras-wins", "keras-off", "pytorch-off"])
def test_filters(tmp_path, model, frameworks, expected):
    task = start(tmp_path, frameworks)
    try:
        model.save(str(tmp_path / "a.keras"))
        model.save(str(tmp_path / "b.h5"))
        assert sorted(file_name(m) for m in outputs(task)) == expected
    finally:
        task.close()


def test_torch_saves_next_to_keras_stay_pytorch(task, model, tmp_path):
    model.save(str(tmp_path / "k.keras"))
    torch.save(model.layers[0].kernel.value.detach(), tmp_path / "kernel.pt")
    frameworks = {file_name(m): m.framework for m in outputs(task)}
    assert frameworks == {"k.keras": "Keras", "kernel.pt": "PyTorch"}


# -- the training script, end to end ---------------------------------------------------------


def test_training_script_end_to_end(tmp_path):
    out, models = run_training_script("keras", tmp_path,
                                      expect="accuracy", env={"KERAS_BACKEND": "torch"})
    epochs = [f"epoch{e:02d}.keras" for e in (1, 2, 3)]
    assert {name for direction, name in models if direction == "output"} == {
        *epochs, "best.weights.h5", "final.keras"}  # no scratch.h5
    for e, name in enumerate(epochs, 1):
        m = models["output", name]
        assert (m.framework, m.iteration) == ("Keras", e)
        assert_stored(m, out / "checkpoints" / name)
    best = models["output", "best.weights.h5"]
    assert best.snapshots and all(s["state"] == "ready" for s in best.snapshots)
    assert_stored(best, out / "best.weights.h5")
    final = models["output", "final.keras"]
    assert (final.framework, len(final.snapshots)) == ("Keras", 1)
    assert_stored(final, out / "final.keras")
    assert models["input", "final.keras"] == final
    assert models["input", "best.weights.h5"] == best
