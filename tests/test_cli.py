"""The clearml-hooks CLI over a real embedded store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from clearml_hooks import Model, OutputModel
from clearml_hooks.cli import cli
from tests.conftest import REPO, run_script


@pytest.fixture
def invoke(store_dir):
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, ["--home", str(store_dir), *args], obj={})

    return run


@pytest.fixture
def models(task, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"cli weights")
    a = OutputModel(name="alpha", tags=["prod"], framework="pytorch")
    a.update_weights(str(weights), iteration=3, async_enable=False)
    a.set_metadata("dataset", "mnist")
    b = OutputModel(name="beta", tags=["dev"])
    return a, b


def test_models_list(invoke, models):
    a, b = models
    result = invoke("models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["beta", "alpha"]
    alpha = rows[1]
    assert alpha["framework"] == "PyTorch" and alpha["iteration"] == 3 and alpha["tags"] == ["prod"]
    assert alpha["url"] == a.url
    assert [r["name"] for r in json.loads(invoke("models", "list", "--tag", "prod", "--json").output)] == ["alpha"]
    assert json.loads(invoke("models", "list", "--tag", "-prod", "--json").output)[0]["name"] == "beta"
    assert json.loads(invoke("models", "list", "--limit", "1", "--json").output)[0]["name"] == "beta"
    assert json.loads(invoke("models", "list", "--metadata", "dataset=mnist", "--json").output)[0]["id"] == a.id
    assert json.loads(invoke("models", "list", "--project", "nope", "--json").output) == []
    table = invoke("models", "list")
    assert table.exit_code == 0 and a.id in table.output and "alpha" in table.output


def test_models_show(invoke, models):
    a, _ = models
    result = invoke("models", "show", a.id, "--json")
    info = json.loads(result.output)
    assert info["name"] == "alpha" and info["metadata"]["dataset"]["value"] == "mnist"
    assert [s["version"] for s in info["snapshots"]] == [1]
    assert info["snapshots"][0]["source"].endswith("w.pt")
    table = invoke("models", "show", a.id)
    assert table.exit_code == 0 and "metadata.dataset" in table.output
    assert "w.pt" in table.output and "error" not in table.output


def test_models_show_says_why_a_snapshot_failed(invoke, store_dir, tmp_path):
    """A version whose file was rewritten in place before it was stored fails; the table
    shows the reason and the file next to that version."""
    weights = tmp_path / "final.bin"
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(f"""
        from clearml_hooks import Task, OutputModel
        task = Task.init(project_name="p", task_name="t", output_uri={str(store_dir)!r})
        open({str(weights)!r}, "wb").write(b"a" * 200_000)
        print(OutputModel(name="gamma").update_weights({str(weights)!r}) and "")
        print(task.models["output"][-1].id)
    """))
    out = run_script(script, env={"CLEARML_HOOKS_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    model_id = out.stdout.split()[-1]
    with open(weights, "r+b") as f:  # behind the hooks, before anything was stored
        f.write(b"b" * 200_000)
    assert invoke("sync").exit_code == 0
    info = json.loads(invoke("models", "show", model_id, "--json").output)
    assert [s["state"] for s in info["snapshots"]] == ["failed"]
    assert "rewritten in place" in info["snapshots"][0]["error"]
    table = invoke("models", "show", model_id)
    assert table.exit_code == 0, table.output
    text = "".join(c for c in table.output if c.isalnum() or c in "._")  # folded cells rejoined
    assert "error" in text and "rewritteninplace" in text and "final.bin" in text


def test_models_get(invoke, models, tmp_path):
    a, _ = models
    result = invoke("models", "get", a.id)
    assert result.exit_code == 0
    assert open(result.output.strip(), "rb").read() == b"cli weights"
    dest = tmp_path / "out"
    result = invoke("models", "get", a.id, "--dest", str(dest))
    assert result.output.strip() == str(dest / "w.pt")
    assert (dest / "w.pt").read_bytes() == b"cli weights"


def test_publish_archive_tag(invoke, models):
    a, b = models
    assert invoke("models", "publish", a.id).exit_code == 0
    assert Model(a.id).published
    again = invoke("models", "publish", a.id)
    assert again.exit_code == 0 and "already" in again.output
    assert invoke("models", "archive", b.id).exit_code == 0
    assert Model(b.id).archived
    assert [r["name"] for r in json.loads(invoke("models", "list", "--json").output)] == ["alpha"]
    assert len(json.loads(invoke("models", "list", "--archived", "--json").output)) == 2
    assert invoke("models", "archive", b.id, "--undo").exit_code == 0
    assert not Model(b.id).archived
    result = invoke("models", "tag", a.id, "+best", "-prod", "extra", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == ["best", "extra"]
    assert Model(a.id).tags == ["best", "extra"]
    assert Model.query_models(tags=["best"]) == [a]


def test_tasks_list(invoke, models, task):
    rows = json.loads(invoke("tasks", "list", "--json").output)
    assert rows[0]["id"] == task.id and rows[0]["output_models"] == 2
    assert invoke("tasks", "list").exit_code == 0


@pytest.mark.parametrize("args", [
    ("models", "show", "nope"), ("models", "get", "nope"), ("models", "publish", "nope"),
    ("models", "archive", "nope"), ("models", "tag", "nope", "+x"),
    ("models", "list", "--tag", "__$bogus"), ("models", "list", "--sort", "color"),
    ("models", "list", "--metadata", "novalue"), ("models", "list", "--limit", "0"),
    ("models", "frobnicate"),
])
def test_errors_exit_2_with_one_line(invoke, task, args):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    if "nope" in args:
        assert result.output.count("\n") == 1 and "nope" in result.output


def test_console_script_and_module(store_dir, task):
    OutputModel(name="via-subprocess")
    env = {**os.environ, "CLEARML_HOOKS_HOME": str(store_dir)}
    out = subprocess.run([sys.executable, "-m", "clearml_hooks", "models", "list", "--json"],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["name"] == "via-subprocess"
    bad = subprocess.run([sys.executable, "-m", "clearml_hooks", "models", "show", "0" * 32],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "0" * 32 in bad.stderr


def test_sync_finishes_snapshots_of_dead_processes(store_dir, tmp_path, invoke):
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(f"""
        from clearml_hooks import Task, OutputModel
        task = Task.init(project_name="offline", task_name="run", output_uri={str(store_dir)!r})
        open({str(tmp_path / 'w.bin')!r}, "wb").write(b"offline bytes")
        OutputModel(name="pending-model").update_weights({str(tmp_path / 'w.bin')!r})
    """))
    result = run_script(script, env={"CLEARML_HOOKS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    from clearml_hooks.config import Settings
    from clearml_hooks.store import store_for

    store = store_for(Settings.resolve(home=str(store_dir)))
    status = json.loads(invoke("status", "--json").output)
    assert status["pending_snapshots"] == 1
    assert store.catalog.pending_snapshots() == []  # journaled, not in the catalog yet
    out = invoke("sync", "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert [f["name"] for f in report["finished"]] == ["pending-model"]
    assert store.catalog.pending_snapshots() == []
    model = Model(report["finished"][0]["model"], store=store)
    assert open(model.get_local_copy(), "rb").read() == b"offline bytes"
    again = invoke("sync")
    assert again.exit_code == 0 and "nothing to sync" in again.output
    assert json.loads(invoke("status", "--json").output)["pending_snapshots"] == 0


def test_a_mistyped_home_is_an_error_and_creates_nothing(tmp_path):
    runner = CliRunner()
    missing = tmp_path / "no-such-store"
    for args in (["models", "list"], ["tasks", "list"], ["status"], ["sync"]):
        result = runner.invoke(cli, ["--home", str(missing), *args], obj={})
        assert result.exit_code == 2, (args, result.output)
        assert "no model store at" in result.output
    assert not missing.exists()
