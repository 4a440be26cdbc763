"""TensorFlow and ``tf.keras``: every save / load captured once, end to end, real TensorFlow.

Runs under three set-ups (tox): TF 2.15 (Keras 2 as ``tf.keras``), TF 2.21 (Keras 3) and TF 2.21
with tf-keras (``TF_USE_LEGACY_KERAS=1``). Tests that only one Keras generation supports say so.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import wrapt

from tests.frameworks import common
from tests.frameworks.common import file_name, inputs, only, outputs, run_training_script, tree

keras = tf.keras
KERAS3 = keras.Model.__module__.startswith("keras.src.models")
keras2_only = pytest.mark.skipif(KERAS3, reason="Keras 2 format (TF 2.15 / tf-keras)")
keras3_only = pytest.mark.skipif(not KERAS3, reason="Keras 3 behaviour")
# Keras 3's tf.keras has no ``saving`` module: users spell it ``keras.saving``
SAVING = keras.saving if hasattr(keras, "saving") else importlib.import_module("keras.saving")
WEIGHTS = "w.weights.h5" if KERAS3 else "w.h5"
X = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
Y = X.sum(axis=1, keepdims=True)


def make_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss=keras.losses.MeanSquaredError())
    return model


@pytest.fixture
def model():
    return make_model()


start = functools.partial(common.start, "tensorflow")
task = common.task_fixture(start)
assert_stored = functools.partial(common.assert_stored, written_nonempty=True)


# -- Keras saves -----------------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "pathlib"])
@pytest.mark.parametrize("name", ["m.keras", "m.h5"])
def test_model_save_is_one_keras_snapshot(task, model, tmp_path, name, as_path):
    target = tmp_path / name
    assert model.save(as_path(target)) is None
    m = only(outputs(task), "Keras", name)
    assert len(m.snapshots) == 1  # Model.save -> save_model -> internals: captured once
    assert_stored(m, target)
    assert task.capture_stats["saves"] == 1


def test_save_weights_and_load_weights(task, model, tmp_path):
    target = tmp_path / WEIGHTS
    model.save_weights(target)
    saved = only(outputs(task), "Keras", WEIGHTS)
    assert_stored(saved, target)
    fresh = make_model()
    fresh.load_weights(str(target))
    np.testing.assert_allclose(fresh.predict(X, verbose=0), model.predict(X, verbose=0))
    assert inputs(task) == [saved]  # lineage: the loaded file is the saved model


def test_public_save_model_load_model_captured_once(task, model, tmp_path):
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    keras.models.save_model(model, a)
    SAVING.save_model(model, str(b))
    out = outputs(task)
    assert sorted(file_name(m) for m in out) == ["a.keras", "b.keras"]
    assert all(len(m.snapshots) == 1 and m.framework == "Keras" for m in out)
    loaded = keras.models.load_model(a)
    assert isinstance(loaded, keras.Model)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0))
    assert inputs(task) == [m for m in out if file_name(m) == "a.keras"]


def test_public_spellings_share_the_wrapper_and_are_restored(tmp_path):
    api = __import__(keras.models.save_model.__module__, fromlist=["save_model"])
    original = api.save_model
    task = start(tmp_path)
    try:
        wrapped = api.save_model
        assert wrapped is not original
        assert keras.models.save_model is wrapped
        assert SAVING.save_model is wrapped
        assert tf.saved_model.save is __import__(
            "tensorflow.python.saved_model.save", fromlist=["save"]).save
        assert isinstance(tf.saved_model.save, wrapt.FunctionWrapper)
    finally:
        task.close()
    assert api.save_model is original
    assert keras.models.save_model is original and SAVING.save_model is original
    assert not isinstance(tf.saved_model.save, wrapt.FunctionWrapper)
    assert type(keras.Model.__dict__["save"]).__name__ == "function"


def test_model_checkpoint_full_and_weights_only(task, model, tmp_path):
    full = keras.callbacks.ModelCheckpoint(str(tmp_path / "ck" / "e{epoch:02d}.keras"))
    weights_name = "best.weights.h5" if KERAS3 else "best_weights"
    weights = keras.callbacks.ModelCheckpoint(str(tmp_path / "ck" / weights_name),
                                              save_weights_only=True)
    model.fit(X, Y, epochs=3, batch_size=16, verbose=0, callbacks=[full, weights])
    out = {file_name(m): m for m in outputs(task)}
    assert sorted(out) == sorted(["e01.keras", "e02.keras", "e03.keras", weights_name])
    for epoch in (1, 2, 3):
        m = out[f"e{epoch:02d}.keras"]
        assert (m.framework, m.iteration, len(m.snapshots)) == ("Keras", epoch, 1)
        assert_stored(m, tmp_path / "ck" / f"e{epoch:02d}.keras")
    w = out[weights_name]
    assert w.framework == "Keras"
    assert [s["iteration"] for s in w.snapshots] == [1, 2, 3]  # one path: a snapshot per epoch
    assert_stored(w, tmp_path / "ck" / weights_name)
    assert task.capture_stats["saves"] == 6


def test_model_export_is_one_tensorflow_savedmodel(task, model, tmp_path):
    target = tmp_path / "serving"
    model.export(str(target))
    m = only(outputs(task), "TensorFlow", "serving")  # not again as tf.saved_model.save
    assert len(m.snapshots) == 1 and m.snapshots[0]["kind"] == "dir"
    assert_stored(m, target)
    assert "saved_model.pb" in tree(m.get_local_copy())


@keras2_only
def test_keras2_savedmodel_directory_is_one_snapshot(task, model, tmp_path):
    target = tmp_path / "savedmodel"
    model.save(str(target))  # no extension: the SavedModel format, a directory
    m = only(outputs(task), "Keras", "savedmodel")
    assert len(m.snapshots) == 1 and m.snapshots[0]["kind"] == "dir"
    assert_stored(m, target)
    loaded = keras.models.load_model(target)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0))
    assert inputs(task) == [m]


@keras2_only
def test_keras2_tf_format_weights_are_one_prefix_snapshot(task, model, tmp_path):
    prefix = tmp_path / "weights" / "w"
    model.save_weights(str(prefix))  # TF checkpoint format: w.index + w.data-00000-of-00001
    m = only(outputs(task), "Keras", "w")
    assert m.snapshots[0]["kind"] == "files"
    assert set(tree(prefix)) >= {"w.index", "w.data-00000-of-00001"}
    assert_stored(m, prefix)
    make_model().load_weights(str(prefix))
    assert inputs(task) == [m]


@keras3_only
def test_keras3_save_without_extension_raises_untouched(task, model, tmp_path):
    with pytest.raises(ValueError, match="Invalid filepath extension") as info:
        model.save(str(tmp_path / "noext"))
    assert "clearml_hooks" not in str(info.value)
    assert not (tmp_path / "noext").exists()
    assert outputs(task) == []
    assert task.capture_stats["agent_errors"] == 0


# -- TensorFlow saves ------------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "pathlib"])
def test_checkpoint_save_is_one_prefix_snapshot(task, model, tmp_path, as_path):
    ckpt = tf.train.Checkpoint(model=model)
    first = ckpt.save(as_path(tmp_path / "tc" / "ckpt"))
    second = ckpt.save(as_path(tmp_path / "tc" / "ckpt"))
    assert first == str(tmp_path / "tc" / "ckpt-1")  # the real prefix, returned untouched
    assert second.endswith("ckpt-2")
    out = {file_name(m): m for m in outputs(task)}
    assert sorted(out) == ["ckpt-1", "ckpt-2"]
    for number, prefix in ((1, first), (2, second)):
        m = out[f"ckpt-{number}"]
        assert (m.framework, m.iteration, m.snapshots[0]["kind"]) == ("TensorFlow", number, "files")
        assert set(tree(prefix)) == {f"ckpt-{number}.index", f"ckpt-{number}.data-00000-of-00001"}
        assert_stored(m, prefix)
    status = tf.train.Checkpoint(model=make_model()).restore(first)
    status.assert_existing_objects_matched()
    assert inputs(task) == [out["ckpt-1"]]


def test_checkpoint_write_and_read(task, model, tmp_path):
    ckpt = tf.train.Checkpoint(model=model)
    path = ckpt.write(str(tmp_path / "written"))
    assert path == str(tmp_path / "written")
    m = only(outputs(task), "TensorFlow", "written")
    assert m.iteration is None
    assert_stored(m, path)
    tf.train.Checkpoint(model=make_model()).read(path).assert_existing_objects_matched()
    assert inputs(task) == [m]


def test_checkpoint_manager(task, model, tmp_path):
    ckpt = tf.train.Checkpoint(model=model)
    manager = tf.train.CheckpointManager(ckpt, str(tmp_path / "mgr"), max_to_keep=1)
    paths = [manager.save(checkpoint_number=step) for step in (10, 20)]
    assert paths == [str(tmp_path / "mgr" / "ckpt-10"), str(tmp_path / "mgr" / "ckpt-20")]
    out = {file_name(m): m for m in outputs(task)}
    assert sorted(out) == ["ckpt-10", "ckpt-20"]
    assert [out[n].iteration for n in ("ckpt-10", "ckpt-20")] == [10, 20]
    # ckpt-10 was deleted by max_to_keep after it was captured: its bytes are still stored
    assert not (tmp_path / "mgr" / "ckpt-10.index").exists()
    assert set(tree(out["ckpt-10"].get_local_copy())) == {"ckpt-10.index",
                                                           "ckpt-10.data-00000-of-00001"}
    assert_stored(out["ckpt-20"], paths[1])
    restored = tf.train.CheckpointManager(tf.train.Checkpoint(model=make_model()),
                                          str(tmp_path / "mgr"), max_to_keep=1)
    assert restored.restore_or_initialize() == paths[1]
    assert inputs(task) == [out["ckpt-20"]]


def test_saved_model_save_and_load(task, tmp_path):
    module = tf.Module()
    module.v = tf.Variable([1.0, 2.0])
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([2])])
    target = tmp_path / "sm"
    assert tf.saved_model.save(module, str(target)) is None
    m = only(outputs(task), "TensorFlow", "sm")
    assert m.snapshots[0]["kind"] == "dir"
    assert_stored(m, target)
    loaded = tf.saved_model.load(target)
    np.testing.assert_allclose(loaded.f(tf.constant([3.0, 4.0])).numpy(), [3.0, 8.0])
    assert inputs(task) == [m]


def test_v1_saver_save_and_restore(task, tmp_path):
    with tf.Graph().as_default():
        v = tf.compat.v1.Variable([1.0, 2.0], name="v")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "v1" / "model"), global_step=7)
            assert prefix == str(tmp_path / "v1" / "model-7")
            saver.restore(sess, prefix)
            np.testing.assert_allclose(sess.run(v), [1.0, 2.0])
    m = only(outputs(task), "TensorFlow", "model-7")
    assert m.iteration == 7
    assert set(tree(prefix)) == {"model-7.index", "model-7.data-00000-of-00001", "model-7.meta"}
    assert_stored(m, prefix)
    assert inputs(task) == [m]


# -- filters ---------------------------------------------------------------------------------


def save_everything(model: keras.Model, folder: Path) -> None:
    model.save(str(folder / "a.keras"))
    model.save(str(folder / "b.h5"))
    tf.train.Checkpoint(model=model).write(str(folder / "ckpt"))
    if not KERAS3:
        model.save(str(folder / "sm"))  # Keras 2 writes it through tf.saved_model internals


@pytest.mark.parametrize("frameworks, expected", [
    ({"keras": "*.keras"}, ["a.keras", "ckpt"]),
    ({"tensorflow": "*.h5"}, ["b.h5"]),  # tensorflow filters Keras saves too...
    ({"keras": "*.keras", "tensorflow": "*.h5"}, ["a.keras"]),  # ...unless keras is given
    ({"tensorflow": ["*.keras", "ckpt"], "keras": "*.h5"}, ["b.h5", "ckpt"]),
    ({"keras": False}, ["ckpt"]),  # Keras internals are not TensorFlow saves either
    ({"tensorflow": False}, []),
    ({"tensorflow": False, "keras": True}, ["a.keras", "b.h5", "sm"]),
], ids=["keras", "tensorflow", "keras-wins", "keras-wins-any-order", "keras-off", "tf-off",
        "tf-off-keras-on"])
def test_filters(tmp_path, model, frameworks, expected):
    task = start(tmp_path, frameworks)
    try:
        save_everything(model, tmp_path)
        names = sorted(file_name(m) for m in outputs(task))
    finally:
        task.close()
    if KERAS3:
        expected = [n for n in expected if n != "sm"]
    assert names == sorted(expected)


def test_filtered_out_load_is_not_an_input(tmp_path, model):
    model.save(str(tmp_path / "a.keras"))
    task = start(tmp_path, {"keras": "*.h5"})
    try:
        keras.models.load_model(str(tmp_path / "a.keras"))
        assert inputs(task) == []
        assert task.capture_stats.get("loads", 0) == 0
    finally:
        task.close()


# -- the training script, end to end ---------------------------------------------------------


def test_training_script_end_to_end(tmp_path):
    out, models = run_training_script("tensorflow", tmp_path,
                                      expect="final loss", env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    epochs = [f"epoch{e:02d}.keras" for e in (1, 2, 3)]
    ckpts = [f"ckpt-{s}" for s in (1, 2, 3, 4)]
    assert {name for direction, name in models if direction == "output"} == {
        *epochs, "best.weights.h5", *ckpts, "final.keras", "serving"}  # no scratch.h5
    for e, name in enumerate(epochs, 1):
        assert (models["output", name].framework, models["output", name].iteration) == ("Keras", e)
    assert_stored(models["output", epochs[-1]], out / "checkpoints" / epochs[-1])
    best = models["output", "best.weights.h5"]
    assert [s["iteration"] for s in best.snapshots] == sorted(s["iteration"] for s in best.snapshots)
    for step, name in enumerate(ckpts, 1):
        m = models["output", name]
        assert (m.framework, m.iteration, m.snapshots[0]["kind"]) == ("TensorFlow", step, "files")
    assert_stored(models["output", "ckpt-4"], out / "tf_ckpts" / "ckpt-4")
    assert models["output", "serving"].framework == "TensorFlow"
    assert_stored(models["output", "serving"], out / "serving")
    final = models["output", "final.keras"]
    assert final.framework == "Keras"
    assert_stored(final, out / "final.keras")
    # lineage: what the script loaded is what it saved
    assert models["input", "final.keras"] == final
    assert models["input", "best.weights.h5"] == best
    assert models["input", "ckpt-4"] == models["output", "ckpt-4"]
