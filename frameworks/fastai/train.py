"""A fastai training script: existing code plus the one ``Task.init`` line.

Trains a tabular regression model on a synthetic DataFrame for a few epochs, checkpoints it
after every epoch with ``Learner.save`` (one name, so one model with a snapshot per epoch),
saves the final weights, reloads them (``Learner.load``, an input model), exports the learner
for inference (``Learner.export``) and loads it back with ``load_learner``. Each is captured once,
as FastAI, not again as PyTorch through the ``torch.save`` inside. (Tabular data: fastai.vision
needs torchvision.)

    python frameworks/fastai/train.py [output_dir]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.tabular.all import (
    Callback,
    Categorify,
    FillMissing,
    Normalize,
    TabularDataLoaders,
    load_learner,
    rmse,
    tabular_learner,
)

from clearml_hooks import Task

EPOCHS = 3


class EpochCheckpoint(Callback):
    """Save the weights after every epoch, under one name."""

    order = 70

    def after_epoch(self):
        self.learn.save("checkpoint")


def synthetic_frame(n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n),
                       "kind": rng.choice(["a", "b", "c"], n)})
    df["target"] = (df.x1 - 0.5 * df.x2 + df.kind.map({"a": 0.0, "b": 1.0, "c": -1.0})
                    + rng.normal(scale=0.1, size=n)).astype("float32")
    return df


def main(out_dir: str) -> None:
    task = Task.init(project_name="frameworks", task_name="fastai-train")
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    dls = TabularDataLoaders.from_df(
        synthetic_frame(), path=path, y_names="target", cat_names=["kind"],
        cont_names=["x1", "x2"], procs=[Categorify, FillMissing, Normalize], bs=64)
    learn = tabular_learner(dls, layers=[32, 16], n_out=1, metrics=rmse)
    with learn.no_bar():
        learn.fit_one_cycle(EPOCHS, 1e-2, cbs=[EpochCheckpoint()])

    learn.save("final")
    learn.load("final")
    with learn.no_bar():
        valid_loss = learn.validate()[0]
    print(f"valid loss {valid_loss:.4f}")

    learn.export("export.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_learner's pickle warning
        inference = load_learner(path / "export.pkl")
    with inference.no_bar():
        preds, _ = inference.get_preds(dl=inference.dls.test_dl(synthetic_frame(8)))
    print("predictions", preds.flatten().tolist())
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fastai-output")
