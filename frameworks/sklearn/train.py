"""A scikit-learn training script: existing code plus the one ``Task.init`` line.

Trains an SGD classifier for a few epochs on synthetic data, checkpoints it every epoch with
``joblib.dump`` (one path, so one model with a snapshot per epoch), caches feature scaling with
``joblib.Memory`` (never captured), saves the final pipeline compressed (``.gz`` suffix) and
loads it back for evaluation (an input model). ``scratch.pkl`` is filtered out by the wildcard.

    python frameworks/sklearn/train.py [output_dir]
"""

from __future__ import annotations

import os
import sys

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clearml_hooks import Task

EPOCHS = 3


def fit_scaler(X):
    return StandardScaler().fit(X)


def main(out_dir: str) -> None:
    task = Task.init(project_name="frameworks", task_name="sklearn-train",
                     auto_connect_frameworks={"scikit": ["*.joblib", "*.gz"]})
    os.makedirs(out_dir, exist_ok=True)
    X, y = make_classification(n_samples=2000, n_features=20, random_state=0)

    memory = joblib.Memory(os.path.join(out_dir, "cache"), verbose=0)
    scaler = memory.cache(fit_scaler)(X)
    scaler = memory.cache(fit_scaler)(X)  # a cache hit: joblib.load inside Memory
    Xs = scaler.transform(X)

    clf = SGDClassifier(loss="log_loss", random_state=0)
    for epoch in range(EPOCHS):
        task.set_last_iteration(epoch)
        clf.partial_fit(Xs, y, classes=np.array([0, 1]))
        joblib.dump(clf, os.path.join(out_dir, "checkpoint.joblib"))

    joblib.dump(Xs[:10], os.path.join(out_dir, "scratch.pkl"))  # not a *.joblib / *.gz file
    final = os.path.join(out_dir, "model.pkl.gz")
    joblib.dump(make_pipeline(scaler, clf), final)  # gzip, inferred from the suffix

    model = joblib.load(final)
    print(f"accuracy {model.score(X, y):.3f}")
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sklearn-output")
