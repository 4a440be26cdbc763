"""A Keras 3 training script (any backend; tox runs it on torch): existing code plus ``Task.init``.

- ``model.fit`` with two ``ModelCheckpoint`` callbacks: one ``.keras`` file per epoch and the
  best weights (``best.weights.h5``, one model with a snapshot per improvement);
- the final model through ``keras.saving.save_model`` (``final.keras``) and a scratch ``.h5``
  that the wildcard filters out;
- loads: the final model for evaluation (an input model) and the best weights.

``Task.init`` runs before ``import keras``: the hooks are installed when Keras is imported.

    KERAS_BACKEND=torch python frameworks/keras/train.py [output_dir]
"""

from __future__ import annotations

import os
import sys

from clearml_hooks import Task

task = Task.init(project_name="frameworks", task_name="keras-train",
                 auto_connect_frameworks={"keras": ["*.keras", "*.weights.h5"]})

import keras  # noqa: E402
import numpy as np  # noqa: E402

EPOCHS = 3


def make_data(n: int = 2048, features: int = 32):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, features)).astype("float32")
    labels = (X[:, :4].sum(axis=1) > 0).astype("int64")
    return X, labels


def make_model(features: int) -> keras.Model:
    inputs = keras.Input((features,))
    x = keras.layers.Dense(128, activation="relu")(inputs)
    x = keras.layers.Dropout(0.1)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    return model


def main(out: str) -> None:
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    X, y = make_data()
    model = make_model(X.shape[1])
    callbacks = [
        keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoints", "epoch{epoch:02d}.keras")),
        keras.callbacks.ModelCheckpoint(os.path.join(out, "best.weights.h5"), monitor="loss",
                                        save_best_only=True, save_weights_only=True),
    ]
    model.fit(X, y, epochs=EPOCHS, batch_size=128, callbacks=callbacks, verbose=0)

    final = os.path.join(out, "final.keras")
    keras.saving.save_model(model, final)
    model.save(os.path.join(out, "scratch.h5"))  # not matched by the wildcards

    restored = keras.saving.load_model(final)
    _, acc = restored.evaluate(X, y, verbose=0)
    print(f"accuracy {acc:.3f}")
    restored.load_weights(os.path.join(out, "best.weights.h5"))
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "keras-output")
