"""A TensorFlow / Keras training script: existing code plus the one ``Task.init`` line.

Runs on ``tf.keras`` whichever Keras it is (Keras 2 on TF 2.15, Keras 3 on TF >= 2.16, tf-keras
with ``TF_USE_LEGACY_KERAS=1``). ``Task.init`` comes before ``import tensorflow``, as in
ClearML's examples, so the hooks are installed when TensorFlow is first imported.

- ``model.fit`` with two ``ModelCheckpoint`` callbacks: one ``.keras`` file per epoch and the
  best weights (``best.weights.h5``, one model with a snapshot per improvement);
- a custom training loop checkpointed with ``tf.train.CheckpointManager`` (prefix snapshots,
  numbered by step);
- the final model (``final.keras``), an inference export (``serving``, a SavedModel directory)
  and a scratch ``.h5`` that the wildcard filters out;
- loads: the final model for evaluation, the best weights and the latest TF checkpoint.

    python frameworks/tensorflow/train.py [output_dir]
"""

from __future__ import annotations

import os
import sys

from clearml_hooks import Task

task = Task.init(
    project_name="frameworks",
    task_name="tensorflow-train",
    auto_connect_frameworks={"keras": ["*.keras", "*.weights.h5", "serving"], "tensorflow": True},
)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

keras = tf.keras
EPOCHS = 3
STEPS = 4


def make_data(n: int = 2048, features: int = 32):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, features)).astype("float32")
    w = rng.normal(size=(features, 1)).astype("float32")
    y = X @ w + 0.1 * rng.normal(size=(n, 1)).astype("float32")
    return X, y


def make_model(features: int) -> keras.Model:
    model = keras.Sequential([
        keras.Input((features,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.MeanSquaredError())
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

    # fine-tune with a custom loop, checkpointed the TensorFlow way
    optimizer = keras.optimizers.SGD(1e-3)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out, "tf_ckpts"), max_to_keep=2)
    loss_fn = keras.losses.MeanSquaredError()
    for step in range(1, STEPS + 1):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(X, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        manager.save(checkpoint_number=step)

    final = os.path.join(out, "final.keras")
    model.save(final)
    model.save(os.path.join(out, "scratch.h5"))  # not matched by the keras wildcards
    model.export(os.path.join(out, "serving"))

    restored = keras.models.load_model(final)
    print(f"final loss {restored.evaluate(X, y, verbose=0):.4f}")
    restored.load_weights(os.path.join(out, "best.weights.h5"))
    tf.train.Checkpoint(model=restored).restore(manager.latest_checkpoint).expect_partial()
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tensorflow-output")
