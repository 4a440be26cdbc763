"""A journal record that cannot be processed fails its own snapshot loudly and blocks nothing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from clearml_hooks.config import Settings
from clearml_hooks.store import store_for
from clearml_hooks.store.journal import describe
from clearml_hooks.store.recovery import recover
from tests.conftest import run_script


def _offline_run_with_one_good_snapshot(tmp_path: Path) -> tuple[Path, dict, Path]:
    """An offline run that journaled one good snapshot: (store, its header, the segment)."""
    store_dir = tmp_path / "store"
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(f"""
        from clearml_hooks import Task, OutputModel
        task = Task.init(project_name="p", task_name="damaged", output_uri={str(store_dir)!r})
        open({str(tmp_path / 'w.bin')!r}, "wb").write(b"good bytes")
        OutputModel(name="good").update_weights({str(tmp_path / 'w.bin')!r})
    """))
    out = run_script(script, env={"CLEARML_HOOKS_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    (journal,) = describe(str(store_dir / "journal"))
    good = next(r.header for r in journal.pending if r.header["t"] == "snap")
    return store_dir, good, sorted(Path(journal.path).glob("*.log"))[-1]


def test_a_malformed_record_fails_alone_and_the_others_are_stored(tmp_path):
    store_dir, good, segment = _offline_run_with_one_good_snapshot(tmp_path)
    bad = {**good, "rid": "b" * 32, "files": [{"rel": "x.bin", "size": 5, "how": "link"}],
           "n": 0}  # a staged entry without its path: cannot be read, is not a service fault
    with open(segment, "ab") as f:
        f.write(json.dumps(bad).encode() + b"\n")
    store = store_for(Settings.resolve(home=str(store_dir)))
    result = recover(store)
    outcomes = {item["rid"]: item["outcome"] for item in result.items}
    assert outcomes == {good["rid"]: "ready", "b" * 32: "failed"}
    failed = store.catalog.snapshot("b" * 32)
    assert failed["state"] == "failed" and "KeyError" in failed["error"]
    assert store.catalog.snapshot(good["rid"])["state"] == "ready"
    assert describe(str(store_dir / "journal")) == []  # resolved, so removed


def test_an_inline_record_shorter_than_its_files_fails_alone(tmp_path):
    """A record whose inline payload is shorter than the sizes its header lists (a damaged
    journal) fails with that reason; the good snapshot of the same batch is stored."""
    store_dir, good, segment = _offline_run_with_one_good_snapshot(tmp_path)
    bad = {**good, "rid": "c" * 32, "files": [{"rel": "x.bin", "size": 50, "how": "inline"}],
           "n": 5}
    with open(segment, "ab") as f:
        f.write(json.dumps(bad).encode() + b"\n" + b"12345")
    store = store_for(Settings.resolve(home=str(store_dir)))
    outcomes = {item["rid"]: item["outcome"] for item in recover(store).items}
    assert outcomes == {good["rid"]: "ready", "c" * 32: "failed"}
    assert "unreadable" in store.catalog.snapshot("c" * 32)["error"]
    assert store.catalog.snapshot(good["rid"])["state"] == "ready"
