"""PyTorch binding, against the real torch: every spelling, every target kind, filters, lineage."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clearml_hooks import Model, Task
from tests.conftest import REPO, run_script
from tests.frameworks.common import file_name


def _stored_bytes(model: Model) -> bytes:
    return Path(model.get_local_copy(raise_on_error=True)).read_bytes()


@pytest.mark.parametrize("spelling", ["str", "path", "fileobj"])
def test_save_and_load_each_target_kind(task, tmp_path, spelling):
    path = tmp_path / "weights.pt"
    target = {"str": str(path), "path": path}.get(spelling)
    state = {"w": torch.arange(6.0)}
    if spelling == "fileobj":
        with open(path, "wb") as f:
            assert torch.save(state, f) is None
        with open(path, "rb") as f:
            loaded = torch.load(f)
    else:
        assert torch.save(state, target) is None
        loaded = torch.load(target)
    assert torch.equal(loaded["w"], state["w"])
    task.flush(wait_for_uploads=True)
    (out,) = task.models["output"]
    assert out.framework == "PyTorch" and file_name(out) == "weights.pt"
    assert out.source == str(path)
    assert _stored_bytes(out) == path.read_bytes()
    assert [m.id for m in task.models["input"]] == [out.id]


def test_torchscript_save_and_load(task, tmp_path):
    module = torch.jit.script(torch.nn.Linear(3, 2))
    torch.jit.save(module, str(tmp_path / "m.ts"))
    torch.jit.load(str(tmp_path / "m.ts"))
    task.flush(wait_for_uploads=True)
    (out,) = task.models["output"]
    assert file_name(out) == "m.ts" and out.framework == "PyTorch"
    assert _stored_bytes(out) == (tmp_path / "m.ts").read_bytes()
    assert task.models["input"][0].id == out.id
    assert torch.jit.save is torch.jit._serialization.save


def test_stream_is_not_captured_and_is_counted(task):
    buffer = io.BytesIO()
    torch.save({"a": 1}, buffer)
    buffer.seek(0)
    assert torch.load(buffer) == {"a": 1}
    task.flush(wait_for_uploads=True)
    assert task.models["output"] == [] and task.models["input"] == []
    assert task.capture_stats["skipped_stream"] == 2


def test_each_save_of_a_path_is_a_new_version(task, tmp_path):
    path = tmp_path / "ckpt.pt"
    contents = []
    for step in range(3):
        task.set_last_iteration(step * 100)
        torch.save({"step": step}, path)
        contents.append(path.read_bytes())
    task.flush(wait_for_uploads=True)
    (model,) = task.models["output"]
    snaps = model.snapshots
    assert [s["version"] for s in snaps] == [1, 2, 3]
    assert [s["iteration"] for s in snaps] == [0, 100, 200]
    assert model.iteration == 200
    assert _stored_bytes(model) == contents[-1]
    for snap, expected in zip(snaps, contents, strict=True):
        assert Path(model.get_local_copy(version=snap["version"])).read_bytes() == expected


def test_wildcard_on_base_name(store_dir, tmp_path):
    with Task.init(project_name="p", task_name="t", output_uri=str(store_dir),
                   auto_connect_frameworks={"pytorch": "final*.pt"}) as task:
        torch.save({}, tmp_path / "epoch1.pt")
        torch.save({}, tmp_path / "final-model.pt")
        task.flush(wait_for_uploads=True)
        assert [file_name(m) for m in task.models["output"]] == ["final-model.pt"]


def test_wildcard_with_slash_matches_end_of_path(store_dir, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "other").mkdir()
    with Task.init(project_name="p", task_name="t", output_uri=str(store_dir),
                   auto_connect_frameworks={"pytorch": ["checkpoints/*.pt"]}) as task:
        torch.save({}, tmp_path / "checkpoints" / "a.pt")
        torch.save({}, tmp_path / "other" / "b.pt")
        task.flush(wait_for_uploads=True)
        assert [m.source for m in task.models["output"]] == [str(tmp_path / "checkpoints" / "a.pt")]


def test_framework_false_captures_nothing(store_dir, tmp_path):
    with Task.init(project_name="p", task_name="t", output_uri=str(store_dir),
                   auto_connect_frameworks={"pytorch": False, "joblib": True}) as task:
        torch.save({}, tmp_path / "x.pt")
        task.flush(wait_for_uploads=True)
        assert task.models["output"] == []


def test_exceptions_pass_through_untouched(task, tmp_path):
    with pytest.raises(FileNotFoundError):
        torch.load(tmp_path / "missing.pt")
    with pytest.raises((FileNotFoundError, RuntimeError)):
        torch.save({}, tmp_path / "no-such-dir" / "x.pt")
    task.flush(wait_for_uploads=True)
    assert task.models["output"] == [] and task.models["input"] == []


def test_load_of_copied_file_links_to_the_model_that_wrote_it(store_dir, tmp_path):
    with Task.init(project_name="p", task_name="train", output_uri=str(store_dir)) as train:
        torch.save({"w": torch.ones(3)}, tmp_path / "model.pt")
        train.flush(wait_for_uploads=True)
        (written,) = train.models["output"]
    shutil.copy(tmp_path / "model.pt", tmp_path / "renamed.pt")
    with Task.init(project_name="p", task_name="eval", output_uri=str(store_dir)) as evaluate:
        torch.load(tmp_path / "renamed.pt")
        evaluate.flush(wait_for_uploads=True)
        assert [m.id for m in evaluate.models["input"]] == [written.id]


def test_load_of_unknown_file_registers_an_imported_model(task, tmp_path):
    path = tmp_path / "pretrained.pt"
    with open(path, "wb") as f:  # written without the agent seeing it
        torch.serialization.save.__wrapped__({"w": torch.zeros(2)}, f)
    torch.load(path)
    task.flush(wait_for_uploads=True)
    (model,) = task.models["input"]
    assert file_name(model) == "pretrained.pt" and model.framework == "PyTorch"
    assert model.url == "file://" + str(path) and model.task is None
    assert task.models["output"] == []


def test_repeated_loads_of_one_file_register_one_input(task, tmp_path):
    torch.save({"w": 1}, tmp_path / "a.pt")
    for _ in range(50):
        torch.load(tmp_path / "a.pt")
    task.flush(wait_for_uploads=True)
    assert len(task.models["input"]) == 1
    assert task.capture_stats["loads"] == 1


def test_training_script_end_to_end(tmp_path):
    store = tmp_path / "store"
    out = run_script(REPO / "frameworks" / "pytorch" / "train.py", "--out", str(tmp_path / "run"),
                     "--project", "e2e", env={"CLEARML_HOOKS_HOME": str(store)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "clearml_hooks", "--home", str(store), "models", "list", "--json"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert listing.returncode == 0, listing.stderr
    listed = json.loads(listing.stdout)
    models = {os.path.basename(m["source"]): m for m in listed}
    assert set(models) == {"last.pt", "final.pt", "final.ts"}
    # ClearML's names: "<task name> - <file stem>" (final.pt and final.ts share one)
    task_name = models["last.pt"]["task_name"]
    assert sorted(m["name"] for m in listed) == [f"{task_name} - {stem}"
                                                for stem in ("final", "final", "last")]
    assert all(m["framework"] == "PyTorch" for m in models.values())
    ckpt = Model(models["last.pt"]["id"], store=_store(store))
    assert [s["iteration"] for s in ckpt.snapshots] == [0, 1, 2]
    assert Path(ckpt.get_local_copy()).read_bytes() == (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()


def _store(home: Path):
    from clearml_hooks.config import Settings
    from clearml_hooks.store import store_for

    return store_for(Settings.resolve(output_uri=str(home)))


def test_save_into_a_compressing_file_object_is_not_captured_truncated(task, tmp_path):
    import gzip

    with gzip.open(tmp_path / "m.pt.gz", "wb") as f:
        torch.save({"w": torch.ones(100)}, f)
    with gzip.open(tmp_path / "m.pt.gz", "rb") as f:
        assert torch.equal(torch.load(f)["w"], torch.ones(100))
    task.flush(wait_for_uploads=True)
    assert task.models["output"] == []
    assert task.capture_stats["skipped_stream"] == 1


def test_save_into_a_named_temporary_file(task, tmp_path):
    import tempfile

    with tempfile.NamedTemporaryFile(dir=tmp_path, suffix=".pt", delete=False) as f:
        torch.save({"w": 1}, f)
    task.flush(wait_for_uploads=True)
    (model,) = task.models["output"]
    assert model.source == f.name
    assert _stored_bytes(model) == Path(f.name).read_bytes()


def test_script_module_save_method_is_captured_once(task, tmp_path):
    """``torch.jit.script(model).save(path)`` (RecursiveScriptModule.save), as ClearML captures
    it; ``torch.jit.save`` calls that method inside and still makes one snapshot."""
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    assert type(scripted) is torch.jit.RecursiveScriptModule  # its own ``save`` runs
    scripted.save(str(tmp_path / "scripted.pt"))
    torch.jit.save(scripted, str(tmp_path / "via_jit.pt"))
    torch.jit.script(torch.nn.Linear(2, 2)).save(tmp_path / "pathlike.pt")
    task.flush(wait_for_uploads=True)
    outputs = {m.source: m for m in task.models["output"]}
    assert sorted(outputs) == sorted(str(tmp_path / n)
                                     for n in ("scripted.pt", "via_jit.pt", "pathlike.pt"))
    for source, model in outputs.items():
        assert model.framework == "PyTorch"
        assert _stored_bytes(model) == Path(source).read_bytes()
        assert len(model.snapshots) == 1
    assert (vars(torch.jit.ScriptModule)["save"]
            is vars(torch.jit.RecursiveScriptModule)["save"])  # one wrapper for both
