"""A PyTorch Lightning training script: existing code plus the one ``Task.init`` line.

Trains a small regression module on synthetic data for a few epochs with a ``ModelCheckpoint``
callback (``last.ckpt`` each epoch: one model with a snapshot per epoch at the trainer's global
step; ``best.ckpt`` when the validation loss improves), saves a final checkpoint with
``trainer.save_checkpoint``, loads it back with ``load_from_checkpoint`` (an input model) and
validates from ``ckpt_path=last.ckpt`` (another input). Runs with either spelling:

    python frameworks/lightning/train.py [output_dir] [lightning.pytorch|pytorch_lightning]
"""

from __future__ import annotations

import importlib
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from clearml_hooks import Task

EPOCHS = 3


def build(pl):
    class Regressor(pl.LightningModule):
        def __init__(self, hidden: int = 32, lr: float = 0.01):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    return Regressor


def data(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.05 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def main(out_dir: str, spelling: str) -> None:
    task = Task.init(project_name="frameworks", task_name=f"lightning-train ({spelling})",
                     auto_connect_frameworks={"lightning": "*.ckpt"})
    pl = importlib.import_module(spelling)
    pl.seed_everything(0)
    Regressor = build(pl)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss",
                                              save_top_k=1, save_last=True)
    trainer = pl.Trainer(max_epochs=EPOCHS, default_root_dir=out_dir, accelerator="cpu", devices=1,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[checkpoint])
    train, val = data(128, 0), data(64, 1)  # 8 steps per epoch
    trainer.fit(Regressor(), train, val)

    final = os.path.join(out_dir, "final.ckpt")
    trainer.save_checkpoint(final)
    model = Regressor.load_from_checkpoint(final)
    model.eval()
    [metrics] = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False).validate(
        Regressor(), val, ckpt_path=os.path.join(ckpt_dir, "last.ckpt"), verbose=False)
    print(f"val_loss {metrics['val_loss']:.4f} at step {trainer.global_step}")
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lightning-output",
         sys.argv[2] if len(sys.argv) > 2 else "lightning.pytorch")
