"""MegEngine: ``megengine.save`` / ``megengine.load`` and ``trace.dump`` captured end to end.

Runs with the real MegEngine 1.13 (wheels only up to Python 3.10). HOME is a temp folder
(conftest): MegEngine writes caches there.
"""

from __future__ import annotations

import functools
import io
import pickle

import megengine
import megengine.functional as F
import megengine.hub.hub
import megengine.module as M
import megengine.optimizer as optim
import megengine.serialization
import numpy as np
import pytest
from megengine.autodiff import GradManager
from megengine.jit import trace

from tests.frameworks import common
from tests.frameworks.common import file_name, inputs, outputs, run_training_script, stored_bytes

ORIGINAL_SAVE, ORIGINAL_LOAD = megengine.serialization.save, megengine.serialization.load
ORIGINAL_DUMP = trace.__dict__["dump"]


def make_net() -> M.Module:
    return M.Sequential(M.Linear(8, 16), M.ReLU(), M.Linear(16, 1))


start = functools.partial(common.start, "megengine")
assert_one_output = functools.partial(common.assert_one_output,
                                      framework="MegEngine", file_url=True)
same_weights = functools.partial(
    common.same_weights, equal=lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)))


# -- save side ----------------------------------------------------------------------------------


def test_save_state_dict_to_str_path(tmp_path):
    task = start(tmp_path)
    path = tmp_path / "model.pkl"
    assert megengine.save(make_net().state_dict(), str(path)) is None  # MegEngine's own return
    assert_one_output(task, path)
    assert task.capture_stats["agent_errors"] == 0


def test_save_whole_module_to_named_file_object(tmp_path):
    task = start(tmp_path)
    path = tmp_path / "net.mge.pkl"
    net = make_net()
    with open(path, "wb") as f:
        megengine.save(net, f)
    assert_one_output(task, path)
    assert same_weights(megengine.load(str(path)), net)


def test_pathlib_path_is_megengine_s_own_error(tmp_path):
    """MegEngine takes a str or a file object only: a Path fails inside MegEngine, untouched."""
    task = start(tmp_path)
    with pytest.raises(AssertionError, match="does not support write"):
        megengine.save(make_net().state_dict(), tmp_path / "model.pkl")
    assert outputs(task) == []
    assert task.capture_stats["agent_errors"] == 0


def test_unnamed_stream_is_not_captured(tmp_path):
    task = start(tmp_path)
    buf = io.BytesIO()
    megengine.save(make_net().state_dict(), buf)
    assert buf.getvalue()
    assert outputs(task) == []
    assert task.capture_stats.get("skipped_stream") == 1


def test_each_save_of_a_path_is_a_snapshot(tmp_path):
    task = start(tmp_path)
    path = tmp_path / "checkpoint.pkl"
    net = make_net()
    for step in range(3):
        task.set_last_iteration(step)
        megengine.save({"step": step, "state": net.state_dict()}, str(path))
    [m] = outputs(task)
    assert [s["iteration"] for s in m.snapshots] == [0, 1, 2]
    assert stored_bytes(m) == path.read_bytes()


def test_traced_graph_dump_is_captured(tmp_path):
    task = start(tmp_path)
    net = make_net()

    @trace(symbolic=True, capture_as_const=True)
    def infer(x, *, net):
        return net(x)

    infer(megengine.tensor(np.zeros((2, 8), "float32")), net=net)
    path = tmp_path / "deploy.mge"
    infer.dump(str(path), arg_names=["x"])
    assert_one_output(task, path)


# -- load side ----------------------------------------------------------------------------------


def test_load_registers_an_input_model(tmp_path):
    path = tmp_path / "pretrained.pkl"
    net = make_net()
    megengine.save(net.state_dict(), str(path))  # before any task: an unknown file
    task = start(tmp_path)
    state = megengine.load(str(path))
    fresh = make_net()
    fresh.load_state_dict(state)
    assert same_weights(fresh, net)  # the loaded object is MegEngine's, untouched
    [inp] = inputs(task)
    assert inp.framework == "MegEngine"
    assert file_name(inp) == "pretrained.pkl"
    assert outputs(task) == []


def test_load_from_named_file_object_links_the_saved_model(tmp_path):
    task = start(tmp_path)
    path = tmp_path / "model.pkl"
    megengine.save(make_net().state_dict(), str(path))
    with open(path, "rb") as f:
        megengine.load(f)
    [out] = outputs(task)
    [inp] = inputs(task)
    assert inp == out


def test_hub_loader_alias_is_hooked(tmp_path):
    """``megengine.hub`` loads downloaded weights through its own name for ``load``."""
    path = tmp_path / "hub-weights.pkl"
    megengine.save(make_net().state_dict(), str(path))
    task = start(tmp_path)
    assert megengine.hub.hub._mge_load_serialized is megengine.load
    megengine.hub.hub._mge_load_serialized(str(path))
    assert [file_name(m) for m in inputs(task)] == ["hub-weights.pkl"]


# -- filters and patching -----------------------------------------------------------------------


def test_wildcard_filter(tmp_path):
    task = start(tmp_path, {"megengine": "final*.pkl"})
    state = make_net().state_dict()
    megengine.save(state, str(tmp_path / "checkpoint.pkl"))
    megengine.save(state, str(tmp_path / "final.pkl"))
    megengine.load(str(tmp_path / "checkpoint.pkl"))
    assert [file_name(m) for m in outputs(task)] == ["final.pkl"]
    assert inputs(task) == []


def test_disabled(tmp_path):
    task = start(tmp_path, {"megengine": False})
    megengine.save(make_net().state_dict(), str(tmp_path / "model.pkl"))
    assert outputs(task) == []
    assert megengine.save is ORIGINAL_SAVE  # a disabled binding patches nothing


def test_aliases_share_one_wrapper_and_are_restored(tmp_path):
    task = start(tmp_path)
    assert megengine.save is megengine.serialization.save is not ORIGINAL_SAVE
    assert megengine.load is megengine.serialization.load is not ORIGINAL_LOAD
    assert megengine.hub.hub._mge_load_serialized is megengine.load
    assert trace.__dict__["dump"] is not ORIGINAL_DUMP
    assert pickle.loads(pickle.dumps(megengine.save)) is megengine.save
    task.close()
    assert megengine.save is megengine.serialization.save is ORIGINAL_SAVE
    assert megengine.load is megengine.serialization.load is ORIGINAL_LOAD
    assert megengine.hub.hub._mge_load_serialized is ORIGINAL_LOAD
    assert trace.__dict__["dump"] is ORIGINAL_DUMP


def test_training_step_with_hooks_on_trains(tmp_path):
    """The hooks leave MegEngine's autodiff and optimizer alone."""
    start(tmp_path)
    net = make_net()
    opt = optim.SGD(net.parameters(), lr=0.05)
    gm = GradManager().attach(net.parameters())
    x = megengine.tensor(np.random.default_rng(0).normal(size=(32, 8)).astype("float32"))
    y = F.sum(x, axis=1, keepdims=True)
    losses = []
    for _ in range(5):
        with gm:
            loss = F.nn.square_loss(net(x), y)
            gm.backward(loss)
        opt.step().clear_grad()
        losses.append(float(loss.numpy()))
    assert losses[-1] < losses[0]


# -- the training script ------------------------------------------------------------------------


def test_training_script_end_to_end(tmp_path):
    out, models = run_training_script("megengine", tmp_path, expect="loss")
    assert set(models) == {("output", "checkpoint.pkl"), ("output", "final.pkl"),
                           ("output", "deploy.mge"), ("input", "final.pkl")}
    ckpt, final = models["output", "checkpoint.pkl"], models["output", "final.pkl"]
    assert [s["iteration"] for s in ckpt.snapshots] == [1, 2, 3]
    assert all(s["state"] == "ready" for s in ckpt.snapshots)
    assert {m.framework for m in models.values()} == {"MegEngine"}
    for name in ("checkpoint.pkl", "final.pkl", "deploy.mge"):
        assert stored_bytes(models["output", name]) == (out / name).read_bytes()
    assert models["input", "final.pkl"] == final  # lineage: the loaded file is the saved model
