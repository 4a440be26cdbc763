"""What the in-process adversary suites share (tests/faults/test_*_adversary.py): a task in
this process, tensors whose stored bytes say which save they are, and the catalog read back
after ``clearml-hooks sync``."""

from __future__ import annotations

from pathlib import Path

from tests.faults._util import (
    assert_drained,
    blob_path,
    check_snapshots,
    open_catalog,
    snapshots,
    sync,
    torch_value,
)


def tensor_state(i: int, n: int = 40_000) -> dict:
    """A state dict whose value (``torch_value``) is ``i``: ~160 KiB by default, above
    inline_max, so it is staged as a link."""
    import torch

    return {"i": torch.tensor(i), "w": torch.full((n,), i, dtype=torch.int32)}


def init_task(home: Path, name: str, project: str = "adversary"):
    from clearml_hooks import Task

    return Task.init(project_name=project, task_name=name, output_uri=str(home),
                     reuse_last_task_id=False)


def agent_errors() -> int:
    from clearml_hooks.hooks import contract

    return contract.error_count()


def snapshots_by_source(home: Path, *, values: bool = True) -> dict[str, dict[int, dict]]:
    """sync, then every snapshot (checked ready-exact or failed-with-reason) by source and
    iteration; nothing left pending. ``values=False``: the caller checks the stored values
    (saves whose value is not their iteration)."""
    sync(home)
    snaps = snapshots(open_catalog(home))
    check_snapshots(snaps, home / "blobs", read_value=torch_value if values else None)
    assert_drained(home)
    out: dict[str, dict[int, dict]] = {}
    for s in snaps:
        out.setdefault(s["model_source"], {})[s["iteration"]] = s
    return out


def stored_value(home: Path, snap: dict) -> int:
    """The value of the (one-file) snapshot's stored bytes."""
    return torch_value(blob_path(home / "blobs", snap["files"][0]["sha256"]))
