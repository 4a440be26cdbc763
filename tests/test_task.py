"""Task.init / current_task / close, as ClearML users expect them."""

from __future__ import annotations

import os

import pytest

from clearml_hooks import Task
from clearml_hooks.hooks.registry import registry


def test_init_returns_open_task_with_identity(store_dir):
    task = Task.init(project_name="vision", task_name="resnet", output_uri=str(store_dir))
    try:
        assert Task.current_task() is task
        assert task.name == "resnet" and task.project == "vision"
        assert len(task.id) == 32
        task.wait_registered()
        row = task.store.catalog.get_task(task.id)
        assert row["project"] == "vision" and row["status"] == "in_progress"
    finally:
        task.close()
    assert Task.current_task() is None
    assert task.store.catalog.get_task(task.id)["status"] == "completed"


def test_second_init_same_name_returns_same_task(store_dir):
    with Task.init(project_name="p", task_name="t", output_uri=str(store_dir)) as task:
        assert Task.init(project_name="p", task_name="t", output_uri=str(store_dir)) is task


def test_second_init_other_name_says_close_first(store_dir):
    with Task.init(project_name="p", task_name="t", output_uri=str(store_dir)):
        with pytest.raises(RuntimeError, match=r"close\(\)"):
            Task.init(project_name="p", task_name="other", output_uri=str(store_dir))


def test_after_close_init_starts_new_task(store_dir):
    first = Task.init(project_name="p", task_name="t", output_uri=str(store_dir))
    first.close()
    second = Task.init(project_name="p", task_name="t", output_uri=str(store_dir))
    try:
        assert second is not first and second.id != first.id
    finally:
        second.close()


def test_context_manager_closes(store_dir):
    with Task.init(project_name="p", task_name="t", output_uri=str(store_dir)) as task:
        assert Task.current_task() is task
    assert task.closed and Task.current_task() is None


def test_clearml_keyword_arguments_are_accepted(store_dir):
    task = Task.init(
        project_name="p", task_name="t", task_type=Task.TaskTypes.training, tags=["a", "b"],
        reuse_last_task_id=False, continue_last_task=False, auto_connect_arg_parser=True,
        auto_resource_monitoring=False, auto_connect_streams=True, output_uri=str(store_dir))
    try:
        assert task.tags == ["a", "b"]
    finally:
        task.close()


def test_unknown_keyword_is_a_type_error(store_dir):
    with pytest.raises(TypeError, match="no_such_option"):
        Task.init(project_name="p", task_name="t", no_such_option=1, output_uri=str(store_dir))
    assert Task.current_task() is None


@pytest.mark.parametrize("bad", [{"pytorch": 3}, {"pytorch": ["*.pt", 5]}, {"pytorch": None}])
def test_bad_filter_value_names_the_key(store_dir, bad):
    with pytest.raises(ValueError, match="pytorch"):
        Task.init(project_name="p", task_name="t", auto_connect_frameworks=bad,
                  output_uri=str(store_dir))
    assert Task.current_task() is None


def test_unknown_framework_key_lists_valid_keys(store_dir):
    with pytest.raises(ValueError) as info:
        Task.init(project_name="p", task_name="t", auto_connect_frameworks={"pytorhc": True},
                  output_uri=str(store_dir))
    message = str(info.value)
    assert "'pytorhc'" in message
    for key in registry().framework_keys():  # the bindings' entry points
        assert key in message


def test_auto_connect_must_be_bool_or_dict(store_dir):
    with pytest.raises(ValueError, match="auto_connect_frameworks"):
        Task.init(project_name="p", task_name="t", auto_connect_frameworks="pytorch",
                  output_uri=str(store_dir))


def test_bad_output_uri_scheme_is_a_clear_error(store_dir):
    with pytest.raises(ValueError, match="ftpx"):
        Task.init(project_name="p", task_name="t", output_uri="ftpx://host/models")
    assert Task.current_task() is None


@pytest.mark.parametrize("value", [True, False])
def test_output_uri_true_means_the_default_store(value, tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "home-store"))
    with Task.init(project_name="p", task_name="t", output_uri=value) as task:
        assert task.store.home == str(tmp_path / "home-store")


def test_clearml_task_methods_scripts_call_do_not_fail(task, tmp_path):
    params = {"lr": 0.1, "epochs": 3}
    assert task.connect(params) is params
    config = {"layers": [64, 64]}
    assert task.connect_configuration(config, name="model") is config
    task.set_parameters({"batch": 32}, dropout=0.5)
    assert task.get_parameters()["batch"] == 32 and task.get_parameter("dropout") == 0.5
    task.add_tags(["sweep", "resnet"])
    assert {"sweep", "resnet"} <= set(task.get_tags())
    assert "sweep" in task.store.catalog.get_task(task.id)["tags"]
    assert task.upload_artifact("stats", {"a": 1}) is True
    task.execute_remotely(queue_name="default")
    Task.add_requirements("torch", "2.13.0")


def _status_after(script_body: str, tmp_path, *, signal_after: float | None = None):
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from clearml_hooks.config import Settings
    from clearml_hooks.store import store_for
    from clearml_hooks.store.recovery import recover
    from tests.conftest import REPO

    store = tmp_path / "store"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from clearml_hooks import Task
        task = Task.init(project_name="end", task_name="run", output_uri={str(store)!r})
        print("ready", flush=True)
    """) + textwrap.dedent(script_body))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        if signal_after is not None:
            time.sleep(signal_after)
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    s = store_for(Settings.resolve(home=str(store)))
    recover(s)  # what the run left journaled (an embedded store is brought up to date lazily)
    (row,) = s.catalog.list_tasks(project="end")
    return proc.returncode, row["status"]


def test_an_unhandled_exception_marks_the_task_failed(tmp_path):
    code, status = _status_after("raise ValueError('boom')\n", tmp_path)
    assert code == 1 and status == "failed"


def test_sigterm_marks_the_task_stopped_and_still_kills_the_process(tmp_path):
    import signal

    code, status = _status_after("time.sleep(60)\n", tmp_path, signal_after=0.5)
    assert code == -signal.SIGTERM and status == "stopped"


def test_a_normal_end_is_completed(tmp_path):
    code, status = _status_after("pass\n", tmp_path)
    assert code == 0 and status == "completed"


def test_a_captured_model_saved_after_loading_one_has_it_as_parent(tmp_path):
    import textwrap

    from clearml_hooks.config import Settings
    from clearml_hooks.models import Model
    from clearml_hooks.store import store_for
    from tests.conftest import run_script

    store = tmp_path / "store"
    base, tuned = tmp_path / "base.pt", tmp_path / "tuned.pt"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        from clearml_hooks import Task
        task = Task.init(project_name="lineage", task_name=sys.argv[1], output_uri={str(store)!r})
        if sys.argv[1] == "pretrain":
            torch.save({{"w": torch.zeros(10)}}, {str(base)!r})
        else:
            state = torch.load({str(base)!r})
            state["w"] += 1
            torch.save(state, {str(tuned)!r})
            torch.save(state, {str(tmp_path / "other.pt")!r})
        task.close()
    """))
    for name in ("pretrain", "finetune"):
        out = run_script(script, name)
        assert out.returncode == 0, out.stderr
    s = store_for(Settings.resolve(home=str(store)))
    by_source = {}
    for task_row in s.catalog.list_tasks(project="lineage"):
        for link in s.catalog.task_models(task_row["id"]):
            model = Model(link["model_id"], store=s)
            by_source[(task_row["name"], link["direction"], os.path.basename(model.source))] = model
    parent = by_source[("pretrain", "output", "base.pt")]
    assert by_source[("finetune", "input", "base.pt")].id == parent.id
    assert by_source[("finetune", "output", "tuned.pt")].parent == parent.id
    assert by_source[("finetune", "output", "other.pt")].parent == parent.id
    assert parent.parent is None
