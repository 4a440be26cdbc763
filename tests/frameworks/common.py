"""Helpers the framework test modules share: tasks, captured models, stored bytes, script runs.

Imports no framework: each ``test_<framework>.py`` imports its framework itself, at the top, so
that a missing or broken framework fails that module instead of skipping it. A module binds the
helpers that take its framework's name or project once, e.g.
``start = functools.partial(common.start, "xgboost")``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from clearml_hooks import Model, Task
from clearml_hooks.config import Settings
from clearml_hooks.store import store_for
from tests.conftest import run_script

REPO = Path(__file__).resolve().parents[2]


# -- tasks and what they captured -------------------------------------------------------------


def start(project: str, tmp_path: Path, frameworks=True) -> Task:
    task = Task.init(project_name=project, task_name="test", output_uri=str(tmp_path / "store"),
                     auto_connect_frameworks=frameworks)
    task.wait_registered()
    return task


def task_fixture(start: Callable[[Path], Task]):
    """A ``task`` fixture for a module: ``start(tmp_path)``, closed after the test."""

    @pytest.fixture
    def task(tmp_path):
        t = start(tmp_path)
        yield t
        t.close()

    return task


def outputs(task: Task) -> list[Model]:
    assert task.flush(wait_for_uploads=True)
    return list(task.models["output"])


def inputs(task: Task) -> list[Model]:
    assert task.flush(wait_for_uploads=True)
    return list(task.models["input"])


def hooked_loads(task: Task, monkeypatch) -> list[str]:
    """Every load the hooks report (the capturer itself folds repeated loads of one file)."""
    seen: list[str] = []
    original = task.capturer.loaded

    def loaded(hook, location, framework):
        seen.append(location.path)
        return original(hook, location, framework)

    monkeypatch.setattr(task.capturer, "loaded", loaded)
    return seen


def file_name(model: Model) -> str:
    """The saved file's (or folder's) name, as a user sees it: the end of the model's source
    path (an imported model's URL). A captured model's name is ClearML's ``"<task name> -
    <file stem>"``."""
    where = model.source or model.url or ""
    return os.path.basename(where.rstrip("/"))


def captured_name(task_name: str, file: str | Path) -> str:
    """ClearML's name for a model captured from a save of ``file`` in task ``task_name``."""
    return f"{task_name} - {Path(file).stem}"


def only(models: list[Model], framework: str, name: str) -> Model:
    """The only model is of ``framework`` and saved as (or loaded from) file ``name``."""
    assert [file_name(m) for m in models] == [name]
    assert models[0].framework == framework
    return models[0]


# -- bytes --------------------------------------------------------------------------------------


def stored_bytes(model: Model) -> bytes:
    return Path(model.get_local_copy(raise_on_error=True)).read_bytes()


def assert_one_output(task: Task, path: Path, framework: str, *, file_url: bool = False,
                      one_snapshot: bool = False) -> Model:
    """The task's only output is ``path``, captured once (not again by an inner framework's
    save), as ``framework``, with exactly its bytes; ``file_url``: stored under a file:// URL;
    ``one_snapshot``: it has exactly one snapshot."""
    out = outputs(task)
    assert [file_name(m) for m in out] == [path.name]
    assert out[0].name == captured_name(task.name, path)
    m = out[0]
    assert m.framework == framework
    assert m.source == str(path)
    if file_url:
        assert m.url and m.url.startswith("file://")
    assert stored_bytes(m) == path.read_bytes()
    if one_snapshot:
        assert len(m.snapshots) == 1
    return m


def tree(path: str | Path) -> dict[str, bytes]:
    """Relative name -> bytes of a file, a directory, or a checkpoint prefix's files."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
                if p.is_file()}
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + ".*"))
            if p.name[len(path.name):].startswith((".index", ".data-", ".meta"))}


def assert_stored(m: Model, written: str | Path, *, written_nonempty: bool = False) -> None:
    """The registry holds exactly the bytes that were written, under the original name(s)."""
    written_tree = tree(written)
    if written_nonempty:
        assert written_tree, f"nothing at {written}"
    assert tree(m.get_local_copy(raise_on_error=True)) == written_tree
    assert m.source == os.path.abspath(written)
    assert m.url


def same_weights(a, b, equal: Callable[[object, object], bool]) -> bool:
    """Two modules' state dicts have the same keys and, by ``equal``, the same tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(equal(sa[k], sb[k]) for k in sa)


# -- the training scripts under frameworks/ ---------------------------------------------------


def script_models(store_dir: Path, project: str, *,
                  query_sees_outputs: bool = False) -> dict[tuple[str, str], Model]:
    """(direction, file name) -> model, for the one task a training script ran in ``project``;
    ``query_sees_outputs``: also assert that the registry's query API finds exactly its outputs
    (when every load is of a model the script wrote)."""
    store = store_for(Settings.resolve(home=str(store_dir)))
    [task_row] = store.catalog.list_tasks(project=project)
    models = {}
    for link in store.catalog.task_models(task_row["id"]):
        model = Model(link["model_id"], store=store)
        models[link["direction"], file_name(model)] = model
    if query_sees_outputs:
        queried = Model.query_models(project_name=project, store=store)
        assert {m.id for m in queried} == {m.id for (d, _), m in models.items() if d == "output"}
    return models


def run_training_script(framework: str, tmp_path: Path, *args: str, expect: str,
                        env: dict | None = None, query_sees_outputs: bool = False,
                        ) -> tuple[Path, dict[tuple[str, str], Model]]:
    """Run ``frameworks/<framework>/train.py <out> *args`` in a fresh interpreter, strict, on its
    own store; it must succeed and print ``expect``. Returns ``out`` and the models of its task
    (:func:`script_models`, project "frameworks")."""
    store, out = tmp_path / "e2e-store", tmp_path / "run"
    proc = run_script(REPO / "frameworks" / framework / "train.py", str(out), *args,
                      env={"CLEARML_HOOKS_HOME": str(store), "CLEARML_HOOKS_STRICT": "1",
                           **(env or {})})
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert expect in proc.stdout
    return out, script_models(store, "frameworks", query_sees_outputs=query_sees_outputs)
