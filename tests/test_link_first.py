"""A checkpoint saved again and again is linked first (``staging.link_first``): link, then stat
our own link, no open. These tests prove that path is the one taken, that it stores exactly the
bytes of each save, that an in-place rewrite behind it fails that snapshot loudly, and that
every case it cannot take goes the general way with nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from clearml_hooks.store import staging


def _state(i: int) -> dict:
    return {"i": torch.tensor(i), "w": torch.full((64 << 10,), i, dtype=torch.int32)}  # 256 KiB


def _counting(monkeypatch) -> dict[str, int]:
    """How often the general way opens a saved file, and how often link_first ran."""
    calls = {"open_regular": 0, "link_first": 0}
    for name in calls:
        real = getattr(staging, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(staging, name, counted)
    return calls


def test_a_checkpoint_saved_again_is_linked_first_and_stored_exactly(tmp_path, monkeypatch):
    from clearml_hooks import Model, Task

    calls = _counting(monkeypatch)
    task = Task.init(project_name="t", task_name="again", output_uri=str(tmp_path / "store"))
    path = tmp_path / "last.pt"
    for i in range(1, 6):
        task.set_last_iteration(i)
        torch.save(_state(i), path)
        assert task.flush(wait_for_uploads=True, timeout=60)
    assert calls == {"open_regular": 1, "link_first": 4}  # the first save went the general way
    assert task.capture_stats["staged_link"] == 5
    [model] = Model.query_models(project_name="t")
    snaps = model.snapshots
    assert [(s["iteration"], s["state"]) for s in snaps] == [(i, "ready") for i in range(1, 6)]
    for snap in snaps:
        copy = model.get_local_copy(version=snap["version"], raise_on_error=True)
        assert torch.load(copy, weights_only=True)["i"] == snap["iteration"]
    assert torch.load(path, weights_only=True)["i"] == 5  # the user's file is the user's
    task.close()


@pytest.fixture
def staged_folder(tmp_path) -> Path:
    folder = tmp_path / "staging"
    folder.mkdir()
    return folder


def test_link_first_links_the_inode_it_journals(tmp_path, staged_folder):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(100_000))
    staged = str(staged_folder / "r1")
    entry = staging.link_first(str(src), staged, str(staged_folder) + os.sep,
                               inline_max=64 << 10, min_free=0)
    st = os.stat(src)
    assert entry == {"size": 100_000, "mtime_ns": st.st_mtime_ns,
                     "id": [st.st_ino, 100_000, st.st_mtime_ns]}
    assert os.path.samefile(staged, src)


@pytest.mark.parametrize("case", ["small", "fifo", "missing", "directory", "no-room",
                                  "other-filesystem"])
def test_link_first_gives_way_and_leaves_nothing(tmp_path, staged_folder, case):
    src = tmp_path / "model.bin"
    min_free = 0
    if case == "small":
        src.write_bytes(b"x" * 100)
    elif case == "fifo":
        os.mkfifo(src)
    elif case == "directory":
        src.mkdir()
    elif case == "no-room":
        src.write_bytes(os.urandom(100_000))
        min_free = 1 << 60  # no filesystem has an exbibyte free
    elif case == "other-filesystem":
        if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(
                staged_folder).st_dev:
            pytest.fail("this test needs /dev/shm on another filesystem than the temp dir")
        src = Path("/dev/shm") / f"clearml-hooks-test-{os.getpid()}.bin"
        src.write_bytes(os.urandom(100_000))
    staging._free_seen.clear()
    try:
        entry = staging.link_first(str(src), str(staged_folder / "r1"),
                                   str(staged_folder) + os.sep, inline_max=64 << 10,
                                   min_free=min_free)
    finally:
        if case == "other-filesystem":
            src.unlink()
    assert entry is None
    assert os.listdir(staged_folder) == []
