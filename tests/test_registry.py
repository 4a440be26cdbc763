"""The hook registry: lazy patching, aliases, exact restore, idempotence, error isolation."""

from __future__ import annotations

import copy
import importlib
import os
import pickle
import sys
import textwrap

import pytest

from clearml_hooks import Task
from clearml_hooks.hooks import contract
from clearml_hooks.hooks.registry import registry
from tests.conftest import run_script
from tests.helpers.bindings import BrokenBinding, FakeBinding


@pytest.fixture
def fake(store_dir):
    import tests.helpers.fakefw as fakefw

    registry().add_binding(FakeBinding)
    fakefw.CALLS.clear()
    task = Task.init(project_name="p", task_name="fake", output_uri=str(store_dir))
    yield fakefw, task
    task.close()
    registry().bindings.pop("fakefw", None)
    registry().hooks.pop("fakefw", None)


def test_user_call_runs_once_with_its_arguments_and_result(fake, tmp_path):
    fakefw, task = fake
    path = tmp_path / "m.bin"
    assert fakefw.write(b"abc", str(path), marker="m") == ("written", "m.bin")
    assert fakefw.CALLS == [("write", str(path), "m")]
    task.flush(wait_for_uploads=True)
    (model,) = task.models["output"]
    assert model.framework == "Custom" and model.source == str(path)


def test_user_exception_passes_through_untouched(fake, tmp_path):
    fakefw, task = fake
    error = KeyError("user's own")
    with pytest.raises(KeyError) as info:
        fakefw.write(error, str(tmp_path / "x.bin"))
    assert info.value is error
    task.flush(wait_for_uploads=True)
    assert task.models["output"] == []


def test_alias_gets_the_same_wrapper(fake):
    fakefw, _task = fake
    assert fakefw.public_write is fakefw.write
    assert fakefw.write.__wrapped__.__name__ == "write"


def test_only_outermost_call_is_captured(fake, tmp_path):
    fakefw, task = fake
    fakefw.outer_write(b"nested", str(tmp_path / "n.bin"))
    task.flush(wait_for_uploads=True)
    assert [os.path.basename(m.source) for m in task.models["output"]] == ["n.bin"]
    assert task.capture_stats["saves"] == 1


def test_uninstrument_restores_originals_and_is_idempotent(fake):
    fakefw, task = fake
    wrapper = fakefw.write
    original = wrapper.__wrapped__
    task.close()
    assert fakefw.write is original and fakefw.public_write is original
    registry().uninstrument()
    assert fakefw.write is original


def test_instrument_twice_wraps_once(fake, store_dir):
    fakefw, task = fake
    wrapper = fakefw.write
    registry().instrument(registry().selection, task.capturer)
    assert fakefw.write is wrapper
    assert not isinstance(wrapper.__wrapped__, type(wrapper))


def test_agent_failure_never_reaches_user_code(tmp_path, store_dir, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_STRICT", "0")
    registry().add_binding(BrokenBinding)
    import tests.helpers.brokenfw as brokenfw

    task = Task.init(project_name="p", task_name="broken", output_uri=str(store_dir))
    try:
        before = contract.error_count()
        assert brokenfw.write(b"1234", str(tmp_path / "b.bin")) == 4
        assert (tmp_path / "b.bin").read_bytes() == b"1234"
        assert contract.error_count() == before + 1
    finally:
        task.close()
        registry().bindings.pop("brokenfw", None)
        registry().hooks.pop("brokenfw", None)


def test_strict_mode_reraises_agent_failures(tmp_path, store_dir):
    registry().add_binding(BrokenBinding)
    import tests.helpers.brokenfw as brokenfw

    task = Task.init(project_name="p", task_name="broken", output_uri=str(store_dir))
    try:
        with pytest.raises(RuntimeError, match="binding bug"):
            brokenfw.write(b"1", str(tmp_path / "b.bin"))
    finally:
        task.close()
        registry().bindings.pop("brokenfw", None)
        registry().hooks.pop("brokenfw", None)


def test_bindings_come_from_the_entry_point_group():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="clearml_hooks.bindings")}
    assert {"pytorch", "keras", "tensorflow", "joblib", "xgboost", "catboost", "lightgbm",
            "fastai", "megengine", "lightning"} <= names
    for ep in entry_points(group="clearml_hooks.bindings"):
        binding = ep.load()
        assert binding.key == ep.name


def test_lazy_patch_on_import_and_import_module(tmp_path):
    script = tmp_path / "lazy.py"
    script.write_text(textwrap.dedent(f"""
        import importlib, sys
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="lazy", output_uri={str(tmp_path / 's')!r})
        assert "torch" not in sys.modules
        torch = importlib.import_module("torch")
        assert type(torch.save).__name__ == "CaptureWrapper", type(torch.save)
        assert torch.save is torch.serialization.save
        assert torch.jit.save is torch.jit._serialization.save
        print("ok")
    """))
    out = run_script(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_framework_imported_before_init_is_patched_at_once(tmp_path):
    script = tmp_path / "early.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        kept = [torch.save]  # (a plain global would be rebound too: see the next test)
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="early", output_uri={str(tmp_path / 's')!r})
        assert torch.save is not kept[0] and torch.save.__wrapped__ is kept[0]
        task.close()
        assert torch.save is kept[0]
        print("ok")
    """))
    out = run_script(script)
    assert out.returncode == 0, out.stderr


def test_framework_whose_first_import_failed_is_patched_later(tmp_path, store_dir):
    pkg = tmp_path / "flakyfw"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import os
        from flakyfw.io import save
        if os.environ.get("FLAKY_FAIL") == "1":
            import flakyfw_missing_optional_dependency  # fails part-way, like a missing extra
    """))
    (pkg / "io.py").write_text("def save(data, path):\n    open(path, 'wb').write(data)\n")

    from clearml_hooks.hooks.binding import Binding, Target, arg

    class FlakyBinding(Binding):
        key = "flakyfw"
        framework = "Custom"
        distribution = "flakyfw"
        targets = (Target("flakyfw.io", "save", "save", arg("path", 1),
                          aliases=("flakyfw:save",)),)

    sys.path.insert(0, str(tmp_path))
    registry().add_binding(FlakyBinding)
    task = Task.init(project_name="p", task_name="flaky", output_uri=str(store_dir))
    try:
        import os

        os.environ["FLAKY_FAIL"] = "1"
        with pytest.raises(ImportError):
            importlib.import_module("flakyfw")
        os.environ["FLAKY_FAIL"] = "0"
        for name in [m for m in sys.modules if m.startswith("flakyfw")]:
            del sys.modules[name]
        flakyfw = importlib.import_module("flakyfw")
        assert type(flakyfw.save).__name__ == "CaptureWrapper"
        assert flakyfw.save is sys.modules["flakyfw.io"].save
        flakyfw.save(b"x", str(tmp_path / "f.bin"))
        task.flush(wait_for_uploads=True)
        assert [os.path.basename(m.source) for m in task.models["output"]] == ["f.bin"]
    finally:
        task.close()
        sys.path.remove(str(tmp_path))
        registry().bindings.pop("flakyfw", None)
        registry().hooks.pop("flakyfw", None)
        for name in [m for m in sys.modules if m.startswith("flakyfw")]:
            del sys.modules[name]


def test_wrapped_function_pickles_and_copies_by_reference(task):
    import torch

    assert pickle.loads(pickle.dumps(torch.save)) is torch.save
    assert copy.copy(torch.save) is torch.save and copy.deepcopy(torch.load) is torch.load


@pytest.mark.parametrize("value", ["pytorch", "*", "xgboost, pytorch"])
def test_disabled_by_environment(tmp_path, value):
    script = tmp_path / "off.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        original = torch.save
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="off", output_uri={str(tmp_path / 's')!r})
        assert torch.save is original
        print("ok")
    """))
    out = run_script(script, env={"CLEARML_HOOKS_DISABLED": value})
    assert out.returncode == 0, out.stderr


def test_auto_connect_false_patches_nothing(tmp_path):
    script = tmp_path / "off.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        original = torch.save
        from clearml_hooks import Task
        Task.init(project_name="p", task_name="off", output_uri={str(tmp_path / 's')!r},
                  auto_connect_frameworks={{"pytorch": False}})
        assert torch.save is original
        print("ok")
    """))
    out = run_script(script)
    assert out.returncode == 0, out.stderr


def test_a_failing_hook_never_fails_the_users_import(store_dir, monkeypatch):
    from clearml_hooks.hooks.binding import Binding, Target, arg

    class ExplodingBinding(Binding):
        key = "explodingfw"
        framework = "Custom"
        distribution = "no-such-distribution"
        targets = (Target("tests.helpers.explodingfw", "thing.save", "save", arg("path", 1)),)

    monkeypatch.setenv("CLEARML_HOOKS_STRICT", "0")
    sys.modules.pop("tests.helpers.explodingfw", None)
    registry().add_binding(ExplodingBinding)
    task = Task.init(project_name="p", task_name="exploding", output_uri=str(store_dir))
    try:
        before = contract.error_count()
        module = importlib.import_module("tests.helpers.explodingfw")
        assert module.save.__name__ == "save"
        assert contract.error_count() == before + 1
    finally:
        task.close()
        registry().bindings.pop("explodingfw", None)
        registry().hooks.pop("explodingfw", None)
        sys.modules.pop("tests.helpers.explodingfw", None)


def test_names_imported_into_the_script_before_init_are_captured(tmp_path):
    script = tmp_path / "early_names.py"
    script.write_text(textwrap.dedent(f"""
        from torch import save, load
        import torch
        kept = [save]
        from clearml_hooks import Task
        task = Task.init(project_name="p", task_name="names", output_uri={str(tmp_path / 's')!r})
        assert save is torch.save and save is not kept[0]
        save({{"w": 1}}, {str(tmp_path / 'm.pt')!r})
        load({str(tmp_path / 'm.pt')!r})
        task.flush(wait_for_uploads=True)
        print(len(task.models["output"]), len(task.models["input"]))
        task.close()
        assert save is kept[0]
    """))
    out = run_script(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1 1"
