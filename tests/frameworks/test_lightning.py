"""PyTorch Lightning: checkpoints saved and loaded through Lightning, captured end to end.

Both spellings are installed side by side and tested: ``lightning.pytorch`` and
``pytorch_lightning`` (oldest supported 2.0.0, and the newest). A Lightning checkpoint goes
``Trainer.save_checkpoint`` -> checkpoint IO -> ``torch.save`` into a buffer -> fsspec write:
each must be captured once, as PyTorch, with the trainer's global step.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

import lightning.pytorch
import pytest
import pytorch_lightning
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.frameworks import common
from tests.frameworks.common import file_name, inputs, outputs, run_training_script, stored_bytes

SPELLINGS = {"lightning.pytorch": lightning.pytorch, "pytorch_lightning": pytorch_lightning}
ORIGINAL_SAVE = {name: pl.Trainer.__dict__["save_checkpoint"] for name, pl in SPELLINGS.items()}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(params=sorted(SPELLINGS))
def pl(request):
    return SPELLINGS[request.param]


def module_class(pl):
    class Regressor(pl.LightningModule):
        def __init__(self, hidden: int = 8):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Regressor


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=16)  # 4 steps


def trainer(pl, root: Path, epochs: int = 1, **kwargs):
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(max_epochs=epochs, default_root_dir=str(root), logger=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      devices=1, **kwargs)


def fitted(pl, root: Path, epochs: int = 1, **kwargs):
    t = trainer(pl, root, epochs, **kwargs)
    model = module_class(pl)()
    t.fit(model, loader())
    return t, model


start = functools.partial(common.start, "lightning")
# once: the inner torch.save adds nothing
assert_one_output = functools.partial(common.assert_one_output,
                                      framework="PyTorch", file_url=True)
same_weights = functools.partial(common.same_weights, equal=torch.equal)


# -- save side ----------------------------------------------------------------------------------


def test_save_checkpoint_str_path(tmp_path, pl):
    task = start(tmp_path)
    t, _ = fitted(pl, tmp_path, epochs=2)
    path = tmp_path / "final.ckpt"
    assert t.save_checkpoint(str(path)) is None  # Lightning's own return value
    m = assert_one_output(task, path)
    assert m.snapshots[-1]["iteration"] == t.global_step == 8
    assert task.capture_stats["agent_errors"] == 0


def test_save_checkpoint_pathlib_path_and_weights_only(tmp_path, pl):
    task = start(tmp_path)
    t, _ = fitted(pl, tmp_path)
    path = tmp_path / "weights.ckpt"
    t.save_checkpoint(path, weights_only=True)
    assert_one_output(task, path)
    assert "optimizer_states" not in torch.load(path, weights_only=False)


def test_model_checkpoint_callback(tmp_path, pl):
    """``ModelCheckpoint`` saves through ``trainer.save_checkpoint``: top-k files and last.ckpt."""
    task = start(tmp_path)
    ckpt_dir = tmp_path / "ckpt"
    callback = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="{epoch}",
                                            save_top_k=-1, save_last=True)
    fitted(pl, tmp_path, epochs=3, enable_checkpointing=True, callbacks=[callback])
    models = {file_name(m): m for m in outputs(task)}
    assert set(models) == {"epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"}
    assert {m.framework for m in models.values()} == {"PyTorch"}
    assert [s["iteration"] for s in models["last.ckpt"].snapshots] == [4, 8, 12]
    assert [models[f"epoch={e}.ckpt"].snapshots[0]["iteration"] for e in range(3)] == [4, 8, 12]
    for name, m in models.items():
        assert stored_bytes(m) == (ckpt_dir / name).read_bytes()


def test_async_checkpoint_io_is_captured_once_when_written(tmp_path, pl):
    """``AsyncCheckpointIO`` writes in a worker thread after ``save_checkpoint`` returned."""
    task = start(tmp_path)
    ckpt_dir = tmp_path / "async"
    callback = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="{step}",
                                            save_top_k=-1)
    fitted(pl, tmp_path, epochs=2, enable_checkpointing=True, callbacks=[callback],
           plugins=[pl.plugins.AsyncCheckpointIO()])
    models = {file_name(m): m for m in outputs(task)}
    assert set(models) == {"step=4.ckpt", "step=8.ckpt"}
    assert [models[n].snapshots[0]["iteration"] for n in ("step=4.ckpt", "step=8.ckpt")] == [4, 8]
    for name, m in models.items():
        assert len(m.snapshots) == 1
        assert stored_bytes(m) == (ckpt_dir / name).read_bytes()


def test_tuner_temporary_checkpoints_are_not_models(tmp_path, pl):
    task = start(tmp_path)
    t = trainer(pl, tmp_path)
    model = module_class(pl)()
    tuner = pl.tuner.Tuner(t)
    tuner.lr_find(model, train_dataloaders=loader(), num_training=5, update_attr=False)
    assert not list(tmp_path.glob(".lr_find_*"))  # Lightning removed its temporary file
    assert outputs(task) == []
    assert inputs(task) == []


# -- load side ----------------------------------------------------------------------------------


def test_load_from_checkpoint_registers_an_input_model(tmp_path, pl):
    t, model = fitted(pl, tmp_path)
    path = tmp_path / "pretrained.ckpt"
    t.save_checkpoint(str(path))  # before any task: an unknown file
    task = start(tmp_path)
    loaded = module_class(pl).load_from_checkpoint(str(path), hidden=8)
    assert same_weights(loaded, model)  # the classmethod's return value, untouched
    [inp] = inputs(task)
    assert inp.framework == "PyTorch"
    assert file_name(inp) == "pretrained.ckpt"
    assert outputs(task) == []


def test_load_from_checkpoint_file_object_links_the_saved_model(tmp_path, pl):
    task = start(tmp_path)
    t, model = fitted(pl, tmp_path)
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    with open(path, "rb") as f:
        assert same_weights(module_class(pl).load_from_checkpoint(f), model)
    [out] = outputs(task)
    [inp] = inputs(task)
    assert inp == out


def test_fit_resumes_from_ckpt_path(tmp_path, pl):
    t, _ = fitted(pl, tmp_path)
    path = tmp_path / "resume.ckpt"
    t.save_checkpoint(str(path))
    task = start(tmp_path)
    t2 = trainer(pl, tmp_path, epochs=2)
    t2.fit(module_class(pl)(), loader(), ckpt_path=str(path))
    assert t2.global_step == 8  # resumed at step 4
    [inp] = inputs(task)
    assert file_name(inp) == "resume.ckpt"
    assert inp.framework == "PyTorch"


# -- filters and patching -----------------------------------------------------------------------


def save_two(pl, tmp_path: Path) -> None:
    t, _ = fitted(pl, tmp_path)
    t.save_checkpoint(str(tmp_path / "final.ckpt"))
    t.save_checkpoint(str(tmp_path / "scratch.ckpt"))
    module_class(pl).load_from_checkpoint(str(tmp_path / "scratch.ckpt"))


def test_wildcard_filter(tmp_path, pl):
    task = start(tmp_path, {"lightning": "final*"})
    save_two(pl, tmp_path)
    assert [file_name(m) for m in outputs(task)] == ["final.ckpt"]
    assert inputs(task) == []


def test_pytorch_wildcard_applies_when_lightning_is_not_named(tmp_path, pl):
    task = start(tmp_path, {"pytorch": "final*"})
    save_two(pl, tmp_path)
    assert [file_name(m) for m in outputs(task)] == ["final.ckpt"]


def test_lightning_key_wins_over_pytorch(tmp_path, pl):
    task = start(tmp_path, {"pytorch": False, "lightning": "scratch*"})
    save_two(pl, tmp_path)
    assert [file_name(m) for m in outputs(task)] == ["scratch.ckpt"]
    assert [file_name(m) for m in inputs(task)] == ["scratch.ckpt"]


def test_disabled(tmp_path, pl):
    task = start(tmp_path, {"lightning": False})
    assert pl.Trainer.__dict__["save_checkpoint"] is ORIGINAL_SAVE[pl.__name__]
    save_two(pl, tmp_path)
    # torch.save (still hooked) only sees Lightning's in-memory buffer
    assert outputs(task) == []


def test_patches_are_restored(tmp_path):
    task = start(tmp_path)
    saving = {name: __import__(f"{name}.core.saving", fromlist=["_"]) for name in SPELLINGS}
    module = {name: __import__(f"{name}.core.module", fromlist=["_"]) for name in SPELLINGS}
    originals = {}
    for name, pl in SPELLINGS.items():
        assert pl.Trainer.__dict__["save_checkpoint"] is not ORIGINAL_SAVE[name]
        wrapper = saving[name]._load_from_checkpoint
        assert module[name]._load_from_checkpoint is wrapper  # the name module.py calls
        assert pickle.loads(pickle.dumps(wrapper)) is wrapper
        originals[name] = wrapper.__wrapped__
    task.close()
    for name, pl in SPELLINGS.items():
        assert pl.Trainer.__dict__["save_checkpoint"] is ORIGINAL_SAVE[name]
        assert saving[name]._load_from_checkpoint is originals[name]
        assert module[name]._load_from_checkpoint is originals[name]


# -- the training script ------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_training_script_end_to_end(tmp_path, spelling):
    out, models = run_training_script("lightning", tmp_path, spelling, expect="val_loss")
    assert set(models) == {("output", "last.ckpt"), ("output", "best.ckpt"),
                           ("output", "final.ckpt"), ("input", "final.ckpt"),
                           ("input", "last.ckpt")}
    assert {m.framework for m in models.values()} == {"PyTorch"}
    last = models["output", "last.ckpt"]
    assert [s["iteration"] for s in last.snapshots] == [8, 16, 24]
    assert all(s["state"] == "ready" for s in last.snapshots)
    for name in ("last.ckpt", "best.ckpt"):
        assert stored_bytes(models["output", name]) == (out / "checkpoints" / name).read_bytes()
    assert stored_bytes(models["output", "final.ckpt"]) == (out / "final.ckpt").read_bytes()
    assert models["input", "final.ckpt"] == models["output", "final.ckpt"]
    assert models["input", "last.ckpt"] == last
    assert os.path.exists(out / "checkpoints" / "last.ckpt")
