"""PyTorch Lightning: save stall of a captured ``Trainer.save_checkpoint``, agent cost per load.

Run (in an environment with lightning): python benchmarks/bench_lightning.py [--repeats 7] [--json]

- save stall: median wall time of ``Trainer.save_checkpoint`` of a 4.3 M-parameter module with its
  Adam state (about 52 MB), with the agent capturing vs agent off, interleaved in one process; the
  store finishes each snapshot between saves, as training computes between checkpoints.
- load cost: the agent's own time per ``LightningModule.load_from_checkpoint(path)`` call, once
  captured (no filter; a repeated load of an unchanged file) and once filtered out by a wildcard.
  Measured by running the installed hook around a no-op in place of the framework (a real load's
  jitter hides microseconds); the wall time of real loads is printed beside it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

KEY = "lightning"


def setup(tmp: str) -> dict:
    import warnings

    import lightning
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    warnings.simplefilter("ignore")

    class Net(pl.LightningModule):
        def __init__(self, width: int = 2048):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    def fitted(width):
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, default_root_dir=tmp)
        x = torch.randn(32, 64)
        trainer.fit(Net(width), DataLoader(TensorDataset(x, x[:, :1]), batch_size=32))
        return trainer

    big = fitted(2048)  # about 4.3 M parameters: weights + Adam state, ~52 MB checkpoint
    small_path = os.path.join(tmp, "small.ckpt")
    fitted(8).save_checkpoint(small_path)
    path = os.path.join(tmp, "model.ckpt")
    return {
        "version": f"lightning {lightning.__version__}", "path": path,
        "save": lambda: big.save_checkpoint(path), "save_label": "Trainer.save_checkpoint",
        "load": lambda: Net.load_from_checkpoint(small_path),
        "load_label": "LightningModule.load_from_checkpoint(path)",
        "hook_call": ("_load_from_checkpoint", (Net, small_path), {}, None),
    }


if __name__ == "__main__":
    harness.main(KEY, setup)
