"""An XGBoost training script: existing code plus the one ``Task.init`` line.

Trains a booster with XGBoost's own ``TrainingCheckPoint`` callback (a checkpoint file every few
rounds), saves the final booster as JSON and a scikit-learn ``XGBClassifier`` as UBJSON, then
loads the booster back (``xgb.Booster(model_file=...)``) and resumes training from the file
(``xgb.train(xgb_model=path)``): both are the same input model.

    python frameworks/xgboost/train.py [output_dir]
"""

from __future__ import annotations

import os
import sys

import numpy as np
import xgboost as xgb

from clearml_hooks import Task

ROUNDS = 12


def main(out_dir: str) -> None:
    task = Task.init(project_name="frameworks", task_name="xgboost-train",
                     auto_connect_frameworks={"xgboost": ["*.json", "*.ubj"]})
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 10))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.3, size=2000) > 0).astype(int)
    dtrain, dvalid = xgb.DMatrix(X[:1600], label=y[:1600]), xgb.DMatrix(X[1600:], label=y[1600:])
    params = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "eval_metric": "logloss"}

    os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
    checkpoints = xgb.callback.TrainingCheckPoint(os.path.join(out_dir, "checkpoints"), "ckpt",
                                                  False, 4)
    booster = xgb.train(params, dtrain, ROUNDS, evals=[(dvalid, "valid")], verbose_eval=False,
                        callbacks=[checkpoints])
    final = os.path.join(out_dir, "model.json")
    booster.save_model(final)
    booster.save_model(os.path.join(out_dir, "model.bin"))  # filtered out: not *.json / *.ubj

    clf = xgb.XGBClassifier(n_estimators=ROUNDS, max_depth=4).fit(X, y)
    clf.save_model(os.path.join(out_dir, "classifier.ubj"))

    loaded = xgb.Booster(model_file=final)
    resumed = xgb.train(params, dtrain, 4, xgb_model=final)
    error = float(((loaded.predict(dvalid) > 0.5) != y[1600:]).mean())
    print(f"valid error {error:.3f}, resumed to {resumed.num_boosted_rounds()} rounds")
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "xgboost-output")
