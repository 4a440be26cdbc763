"""fastai: ``Learner.save/load``, ``Learner.export`` / ``load_learner`` captured end to end.

Real fastai on tabular data (``fastai.vision`` needs torchvision, which does not import beside
torch 2.13). Runs on fastai 2.8.7 (fastcore < 1.9) and the newest fastai. Every fastai save goes
through ``torch.save``: each must be captured once, as FastAI, never again as PyTorch.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import fastai.basics
import fastai.learner
import fastai.tabular.all as fta
import numpy as np
import pandas as pd
import pytest
import torch
from fastai.learner import Learner

from tests.frameworks import common
from tests.frameworks.common import file_name, inputs, outputs, run_training_script, stored_bytes

ORIGINAL = {name: Learner.__dict__[name] for name in ("save", "load", "export")}
ORIGINAL_LOAD_LEARNER = fastai.learner.load_learner
ORIGINAL_TORCH_SAVE = torch.save

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def frame(n: int = 160) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                       "c": rng.choice(["x", "y", "z"], n)})
    df["y"] = (df.a + 2 * df.b + (df.c == "x")).astype("float32")
    return df


def make_learner(path: Path, *, fit: bool = True) -> Learner:
    dls = fta.TabularDataLoaders.from_df(
        frame(), path=path, y_names="y", cat_names=["c"], cont_names=["a", "b"],
        procs=[fta.Categorify, fta.FillMissing, fta.Normalize], bs=32)
    learn = fta.tabular_learner(dls, layers=[16], n_out=1)
    if fit:
        with learn.no_bar(), learn.no_logging():
            learn.fit(1)
    return learn


start = functools.partial(common.start, "fastai")
# once: not again as PyTorch via torch.save
assert_one_output = functools.partial(common.assert_one_output,
                                      framework="FastAI", file_url=True)
same_weights = functools.partial(common.same_weights, equal=torch.equal)


# -- Learner.save / Learner.load --------------------------------------------------------------


def test_learner_save_captures_the_computed_file_once(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path)
    returned = learn.save("weights")
    path = tmp_path / "models" / "weights.pth"
    assert returned == path  # fastai's own return value, untouched
    m = assert_one_output(task, path)
    assert m.snapshots[-1]["iteration"] == learn.train_iter  # batches trained so far
    assert task.capture_stats["agent_errors"] == 0


def test_learner_save_to_pathlib_path_outside_model_dir(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    learn.save(tmp_path / "elsewhere" / "w")  # an absolute path wins over path/model_dir
    assert_one_output(task, tmp_path / "elsewhere" / "w.pth")


def test_learner_save_to_named_file_object(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path)
    path = tmp_path / "stream.pth"
    with open(path, "wb") as f:
        learn.save(f)
    assert_one_output(task, path)


def test_learner_load_registers_an_input_model(tmp_path):
    learn = make_learner(tmp_path)
    learn.save("pretrained")  # before any task: an unknown file
    task = start(tmp_path)
    other = make_learner(tmp_path, fit=False)
    assert other.load("pretrained") is other  # fastai returns the Learner, untouched
    assert same_weights(other.model, learn.model)
    [inp] = inputs(task)
    assert inp.framework == "FastAI"
    assert file_name(inp) == "pretrained.pth"
    assert outputs(task) == []


def test_save_then_load_links_the_same_model(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path)
    learn.save("model")
    learn.load("model")
    [out] = outputs(task)
    [inp] = inputs(task)
    assert inp == out


def test_checkpoint_callback_snapshots(tmp_path):
    """``SaveModelCallback(every_epoch=...)``-style saves of one name: one model, a snapshot each."""

    class Checkpoint(fastai.basics.Callback):
        order = 70

        def after_epoch(self):
            self.learn.save("checkpoint")

    learn = make_learner(tmp_path, fit=False)
    task = start(tmp_path)
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, cbs=[Checkpoint()])
    [m] = outputs(task)
    per_epoch = learn.train_iter // 3
    assert [s["iteration"] for s in m.snapshots] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert stored_bytes(m) == (tmp_path / "models" / "checkpoint.pth").read_bytes()


def test_save_model_function(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path)
    path = tmp_path / "direct.pth"
    fastai.learner.save_model(path, learn.model, learn.opt)
    fastai.learner.load_model(path, learn.model, learn.opt)
    m = assert_one_output(task, path)
    assert inputs(task) == [m]


# -- export / load_learner --------------------------------------------------------------------


def test_export_and_load_learner(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path)
    assert learn.export("export.pkl") is None
    path = tmp_path / "export.pkl"
    m = assert_one_output(task, path)
    loaded = fta.load_learner(path)  # the star-imported spelling
    assert isinstance(loaded, Learner)
    assert same_weights(loaded.model, learn.model)
    assert inputs(task) == [m]


def test_load_learner_from_named_file_object(tmp_path):
    make_learner(tmp_path).export()
    task = start(tmp_path)
    with open(tmp_path / "export.pkl", "rb") as f:
        assert isinstance(fastai.learner.load_learner(f), Learner)
    [inp] = inputs(task)
    assert file_name(inp) == "export.pkl"
    assert inp.framework == "FastAI"


# -- filters ----------------------------------------------------------------------------------


def save_both(learn: Learner) -> None:
    learn.save("final")
    learn.save("scratch")
    learn.load("scratch")


def test_wildcard_filter(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path, {"fastai": "final*"})
    save_both(learn)
    out = outputs(task)
    # the filtered-out save is not captured by the PyTorch binding through torch.save either
    assert [(file_name(m), m.framework) for m in out] == [("final.pth", "FastAI")]
    assert inputs(task) == []


def test_pytorch_wildcard_applies_when_fastai_is_not_named(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path, {"pytorch": "final*"})
    save_both(learn)
    assert [(file_name(m), m.framework) for m in outputs(task)] == [("final.pth", "FastAI")]


def test_fastai_key_wins_over_pytorch(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path, {"pytorch": "nothing*", "fastai": "final*"})
    save_both(learn)
    assert [file_name(m) for m in outputs(task)] == ["final.pth"]


def test_disabled_fastai_leaves_the_files_to_pytorch(tmp_path):
    learn = make_learner(tmp_path)
    task = start(tmp_path, {"fastai": False})
    assert Learner.__dict__["save"] is ORIGINAL["save"]  # a disabled binding patches nothing
    learn.save("final")
    assert [(file_name(m), m.framework) for m in outputs(task)] == [("final.pth", "PyTorch")]


# -- patching ---------------------------------------------------------------------------------


def test_aliases_share_one_wrapper_and_are_restored(tmp_path):
    task = start(tmp_path)
    for name, original in ORIGINAL.items():
        assert Learner.__dict__[name] is not original
    wrapper = fastai.learner.load_learner
    assert wrapper is not ORIGINAL_LOAD_LEARNER
    assert fastai.basics.load_learner is wrapper  # star re-exports imported before Task.init
    assert fta.load_learner is wrapper
    assert pickle.loads(pickle.dumps(wrapper)) is wrapper
    task.close()
    for name, original in ORIGINAL.items():
        assert Learner.__dict__[name] is original
    assert fastai.learner.load_learner is fastai.basics.load_learner is ORIGINAL_LOAD_LEARNER
    assert fta.load_learner is ORIGINAL_LOAD_LEARNER
    assert torch.save is ORIGINAL_TORCH_SAVE


# -- the training script ----------------------------------------------------------------------


def test_training_script_end_to_end(tmp_path):
    out, models = run_training_script("fastai", tmp_path, expect="valid loss")
    assert set(models) == {("output", "checkpoint.pth"), ("output", "final.pth"),
                           ("output", "export.pkl"), ("input", "final.pth"),
                           ("input", "export.pkl")}
    assert {m.framework for m in models.values()} == {"FastAI"}
    ckpt = models["output", "checkpoint.pth"]
    assert len(ckpt.snapshots) == 3
    iterations = [s["iteration"] for s in ckpt.snapshots]
    assert iterations == sorted(iterations) and iterations[0] > 0
    assert all(s["state"] == "ready" for s in ckpt.snapshots)
    assert stored_bytes(ckpt) == (out / "models" / "checkpoint.pth").read_bytes()
    assert stored_bytes(models["output", "final.pth"]) == (out / "models" / "final.pth").read_bytes()
    assert stored_bytes(models["output", "export.pkl"]) == (out / "export.pkl").read_bytes()
    assert models["input", "final.pth"] == models["output", "final.pth"]
    assert models["input", "export.pkl"] == models["output", "export.pkl"]
