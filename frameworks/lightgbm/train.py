"""A LightGBM training script: existing code plus the one ``Task.init`` line.

Trains a booster in three stages, each resuming from the previous checkpoint file
(``lgb.train(init_model=path)``: an input model) and overwriting it (one model, a snapshot per
stage), saves the final booster and a scikit-learn ``LGBMClassifier``'s booster
(``model.booster_.save_model``) as text, pickles the classifier with joblib (framework LightGBM,
through the joblib binding), and loads the final model back with ``lgb.Booster(model_file=...)``.

    python frameworks/lightgbm/train.py [output_dir]
"""

from __future__ import annotations

import os
import sys

import joblib
import lightgbm as lgb
import numpy as np

from clearml_hooks import Task

STAGES, ROUNDS = 3, 10


def main(out_dir: str) -> None:
    task = Task.init(project_name="frameworks", task_name="lightgbm-train",
                     auto_connect_frameworks={"lightgbm": "*.txt", "joblib": "*.joblib"})
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 10))
    y = (X[:, 0] + X[:, 3] + rng.normal(scale=0.3, size=2000) > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.2, "verbose": -1}
    checkpoint = os.path.join(out_dir, "checkpoint.txt")

    booster = None
    for stage in range(STAGES):
        dtrain = lgb.Dataset(X[:1600], label=y[:1600], free_raw_data=False)
        booster = lgb.train(params, dtrain, ROUNDS, init_model=checkpoint if stage else None)
        task.set_last_iteration((stage + 1) * ROUNDS)
        booster.save_model(checkpoint)

    final = os.path.join(out_dir, "model.txt")
    booster.save_model(final)
    booster.save_model(os.path.join(out_dir, "model.lgb"))  # filtered out: not *.txt

    clf = lgb.LGBMClassifier(n_estimators=ROUNDS, num_leaves=15, verbose=-1).fit(X, y)
    clf.booster_.save_model(os.path.join(out_dir, "classifier.txt"))
    joblib.dump(clf, os.path.join(out_dir, "classifier.joblib"))

    loaded = lgb.Booster(model_file=final)
    accuracy = float(((loaded.predict(X[1600:]) > 0.5) == y[1600:]).mean())
    print(f"accuracy {accuracy:.3f} after {loaded.current_iteration()} rounds")
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lightgbm-output")
