"""TensorBoard steps become the task's iteration (ClearML's TensorBoard binding): real
torch.utils.tensorboard and tensorboardX writers, real saves, the snapshots' iterations."""

from __future__ import annotations

import json
import textwrap

import pytest
import tensorboardX
import torch
from torch.utils import tensorboard as torch_tb

from clearml_hooks import Model, Task
from clearml_hooks.config import Settings
from clearml_hooks.hooks import contract, tensorboard
from clearml_hooks.store import store_for
from tests.conftest import run_script

WRITERS = {"torch": torch_tb.SummaryWriter, "tensorboardX": tensorboardX.SummaryWriter}


@pytest.fixture(autouse=True)
def _restored():
    yield
    tensorboard.uninstall()


@pytest.fixture
def tb_task(task):
    """A task with the TensorBoard hook on (``Task.init`` installs it once task.py calls
    ``tensorboard.install()``; installing again is a no-op)."""
    tensorboard.install()
    return task


def _iterations(task: Task, file: str) -> list[int | None]:
    assert task.flush(wait_for_uploads=True)
    [model] = [m for m in task.models["output"] if m.source.endswith("/" + file)]
    return [s["iteration"] for s in model.snapshots]


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_the_latest_global_step_is_recorded_with_the_next_snapshots(tb_task, tmp_path, kind):
    writer = WRITERS[kind](log_dir=str(tmp_path / "runs"))
    writer.add_scalar("loss", 0.5, global_step=10)
    torch.save({"w": 1}, tmp_path / "ckpt.pt")
    writer.add_scalars("losses", {"train": 0.4, "val": 0.6}, global_step=20)
    writer.add_histogram("weights", torch.arange(10.0), global_step=30)
    torch.save({"w": 2}, tmp_path / "ckpt.pt")
    writer.add_text("note", "no step")
    writer.add_scalar("loss", 0.3, global_step=5)  # an older step does not move it back
    torch.save({"w": 3}, tmp_path / "ckpt.pt")
    writer.close()
    assert _iterations(tb_task, "ckpt.pt") == [10, 30, 30]


def test_tensorboardx_default_metadata_step(tb_task, tmp_path):
    writer = tensorboardX.SummaryWriter(logdir=str(tmp_path / "runs"))
    with writer.use_metadata(global_step=7):
        writer.add_scalar("loss", 0.5)
    writer.close()
    assert tb_task.get_last_iteration() == 7


def test_an_explicit_iteration_holds_until_tensorboard_passes_it(tb_task, tmp_path):
    writer = torch_tb.SummaryWriter(log_dir=str(tmp_path / "runs"))
    tb_task.set_last_iteration(100)
    writer.add_scalar("loss", 0.5, global_step=50)
    assert tb_task.get_last_iteration() == 100
    writer.add_scalar("loss", 0.4, global_step=150)
    assert tb_task.get_last_iteration() == 150
    writer.close()


def test_install_is_idempotent_and_uninstall_restores_exactly(tmp_path):
    from torch.utils.tensorboard.writer import FileWriter

    original = FileWriter.__dict__["add_event"]
    tensorboard.install()
    tensorboard.install()
    wrapper = FileWriter.__dict__["add_event"]
    assert wrapper is not original and wrapper.__wrapped__ is original
    assert tensorboard.installed() == ["tensorboardX.writer", "torch.utils.tensorboard.writer"]
    tensorboard.uninstall()
    tensorboard.uninstall()
    assert FileWriter.__dict__["add_event"] is original
    assert tensorboard.installed() == []


def test_no_open_task_changes_nothing(tmp_path):
    tensorboard.install()
    writer = torch_tb.SummaryWriter(log_dir=str(tmp_path / "runs"))
    writer.add_scalar("loss", 0.5, global_step=3)
    writer.close()


def test_an_agent_failure_never_reaches_the_writer_call(tb_task, tmp_path, monkeypatch):
    monkeypatch.delenv("CLEARML_HOOKS_STRICT")
    writer = torch_tb.SummaryWriter(log_dir=str(tmp_path / "runs"))

    def broken(iteration):
        raise RuntimeError("agent bug")

    monkeypatch.setattr(tb_task, "set_last_iteration", broken)
    before = contract.error_count()
    writer.add_scalar("loss", 0.5, global_step=3)  # no exception here
    writer.close()
    assert contract.error_count() == before + 1


@pytest.mark.parametrize(("spec", "on"), [
    (True, True), (False, False), ({"tensorboard": False}, False), ({"pytorch": True}, True),
    ({"tensorboard": True}, True)])
def test_auto_connect_frameworks_switch(spec, on):
    assert tensorboard.wanted(spec) is on


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_DISABLED", "tensorboard")
    assert tensorboard.wanted(True) is False


def test_clearml_style_training_script(tmp_path):
    """Task.init, a label enumeration, SummaryWriter imported after Task.init (the post-import
    hook patches it), torch.save each epoch: names, labels and iterations as in ClearML."""
    store = tmp_path / "store"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from clearml_hooks import Task
        from clearml_hooks.hooks import tensorboard

        task = Task.init(project_name="tb", task_name="mnist", output_uri={str(store)!r})
        tensorboard.install()  # a no-op once Task.init installs it
        task.set_model_label_enumeration({{"zero": 0, "one": 1}})
        from torch.utils.tensorboard import SummaryWriter

        net = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        writer = SummaryWriter(log_dir={str(tmp_path / "runs")!r})
        step = 0
        for epoch in range(3):
            for _ in range(4):
                loss = net(torch.randn(8, 4)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                writer.add_scalar("train/loss", loss.item(), global_step=step)
            torch.save(net.state_dict(), {str(tmp_path / "model.pt")!r})
        writer.close()
        task.close()
    """))
    out = run_script(script)
    assert out.returncode == 0, out.stderr
    s = store_for(Settings.resolve(home=str(store)))
    [task_row] = s.catalog.list_tasks(project="tb")
    [link] = s.catalog.task_models(task_row["id"])
    model = Model(link["model_id"], store=s)
    assert model.name == "mnist - model" and link["link_name"] == "model.pt"
    assert model.source == str(tmp_path / "model.pt")
    assert model.labels == {"zero": 0, "one": 1}
    assert [v["iteration"] for v in model.snapshots] == [4, 8, 12]
    assert model.iteration == 12
    assert json.loads(task_row["labels"]) == {"zero": 0, "one": 1}


def test_task_init_installs_the_hook_and_close_removes_it(store_dir, tmp_path):
    with Task.init(project_name="p", task_name="t", output_uri=str(store_dir)) as task:
        assert tensorboard.installed() == ["tensorboardX.writer", "torch.utils.tensorboard.writer"]
        writer = torch_tb.SummaryWriter(log_dir=str(tmp_path / "runs"))
        writer.add_scalar("loss", 0.5, global_step=5)
        writer.close()
        assert task.get_last_iteration() == 5
    assert tensorboard.installed() == []


def test_auto_connect_frameworks_can_switch_tensorboard_off(store_dir):
    with Task.init(project_name="p", task_name="t", output_uri=str(store_dir),
                   auto_connect_frameworks={"tensorboard": False}):
        assert tensorboard.installed() == []
