"""A CatBoost training script: existing code plus the one ``Task.init`` line.

Trains a classifier in three stages, each resuming from the previous checkpoint file
(``fit(init_model=path)``: an input model) and overwriting it (one model, a snapshot per stage),
exports the final model as ``.cbm`` and ONNX (``.json`` is filtered out by the wildcard) and
loads the ``.cbm`` back for evaluation.

    python frameworks/catboost/train.py [output_dir]
"""

from __future__ import annotations

import os
import sys

import numpy as np
from catboost import CatBoostClassifier

from clearml_hooks import Task

STAGES, ITERATIONS = 3, 20


def main(out_dir: str) -> None:
    task = Task.init(project_name="frameworks", task_name="catboost-train",
                     auto_connect_frameworks={"catboost": ["*.cbm", "*.onnx"]})
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 10))
    y = (X[:, 0] - X[:, 2] + rng.normal(scale=0.3, size=2000) > 0).astype(int)
    checkpoint = os.path.join(out_dir, "checkpoint.cbm")

    model = None
    for stage in range(STAGES):
        model = CatBoostClassifier(iterations=ITERATIONS, depth=4, learning_rate=0.2, verbose=0,
                                   random_seed=0, train_dir=os.path.join(out_dir, "catboost_info"))
        model.fit(X[:1600], y[:1600], init_model=checkpoint if stage else None)
        task.set_last_iteration((stage + 1) * ITERATIONS)
        model.save_model(checkpoint)

    model.save_model(os.path.join(out_dir, "model.cbm"))
    model.save_model(os.path.join(out_dir, "model.onnx"), format="onnx")
    model.save_model(os.path.join(out_dir, "model.json"), format="json")  # filtered out

    loaded = CatBoostClassifier().load_model(os.path.join(out_dir, "model.cbm"))
    accuracy = float((loaded.predict(X[1600:]) == y[1600:]).mean())
    print(f"accuracy {accuracy:.3f} after {loaded.tree_count_} trees")
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "catboost-output")
