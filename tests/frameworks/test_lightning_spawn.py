"""Lightning ``ddp_spawn`` (2 CPU processes, gloo): rank 0 runs in a fresh interpreter started by
``torch.multiprocessing.spawn``, which joins the parent's task (``Task.init`` there) through the
environment; its checkpoints are captured into that task. Run by the lightning tox envs.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from tests.conftest import run_script

pytest.importorskip("lightning")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

SCRIPT = """
    import sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from clearml_hooks import Task
    import {pl} as pl
    from {pl}.callbacks import ModelCheckpoint


    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)


    if __name__ == "__main__":
        task = Task.init(project_name="p", task_name="ddp-spawn", output_uri=sys.argv[1])
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)
        trainer = pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=1,
                             default_root_dir=sys.argv[2], logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[ModelCheckpoint(dirpath=sys.argv[2], save_last=True,
                                                        save_top_k=0)])
        trainer.fit(Regressor(), data)
        task.flush(wait_for_uploads=True)
        models = task.models
        print(json.dumps({{"task": task.id, "inputs": [m.source for m in models["input"]],
                          "outputs": [(m.name, m.source, [s["iteration"] for s in m.snapshots])
                                      for m in models["output"]]}}))
"""


def test_ddp_spawn_rank_zero_checkpoints_join_the_parent_task(tmp_path):
    # one spelling: propagation does not depend on it (test_lightning.py covers both)
    script = tmp_path / "spawn_train.py"
    script.write_text("import json\n" + textwrap.dedent(SCRIPT.format(pl="lightning.pytorch")))
    # three interpreters import torch and Lightning: one bytecode cache for them (in tmp_path),
    # not a compile from source each when PYTHONDONTWRITEBYTECODE is set (tox sets it)
    env = {"PYTHONWARNINGS": "ignore", "CLEARML_HOOKS_HOME": str(tmp_path / "h"),
           "PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}
    out = run_script(script, str(tmp_path / "store"), str(tmp_path / "ckpts"), cwd=tmp_path,
                     env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # one model, last.ckpt at the trainer's step (2 steps: 32 samples, batches of 8, 2 ranks),
    # captured in the spawned rank 0; the file in which Lightning hands rank 0's weights to the
    # main process (.temp.ckpt) is not a model, saved or loaded
    ckpt = str(tmp_path / "ckpts" / "last.ckpt")
    assert result["outputs"] == [["ddp-spawn - last", ckpt, [2]]], result
    assert result["inputs"] == [], result
    assert os.path.exists(tmp_path / "ckpts" / "last.ckpt")
