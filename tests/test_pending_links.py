"""The process-wide index of pending hard links (store/pending_links.py): what a hooked save of
a path may rewrite in place is found exactly, by path, folder, checkpoint prefix or inode, and
nothing stays indexed once it is taken or resolved."""

from __future__ import annotations

from clearml_hooks.store.pending_links import PendingLinks


def _entry(rid: str, inode: int) -> dict:
    return {"rid": rid, "id": [inode, 10, 1], "path": f"/staging/{rid}"}


def _taken(links: PendingLinks, path: str) -> list[str]:
    return sorted(p for p, _entries in links.take_under(path))


def _taken_inode(links: PendingLinks, inode: int) -> list[str]:
    return sorted(p for p, _entries in links.take_inode(inode))


def test_a_save_takes_the_file_its_folder_and_its_prefix_but_not_its_neighbours():
    links = PendingLinks()
    for i, path in enumerate(["/w/last.pt", "/w/last.pt.index", "/w/last.pt2", "/w/last.ptx",
                              "/w/ckpt/a.bin", "/w/ckpt/sub/b.bin", "/w/ckpt2/c.bin"]):
        links.add(path, _entry(f"r{i}", 100 + i))
    assert _taken(links, "/w/last.pt") == ["/w/last.pt", "/w/last.pt.index"]
    assert _taken(links, "/w/ckpt") == ["/w/ckpt/a.bin", "/w/ckpt/sub/b.bin"]
    assert _taken(links, "/w/last.pt") == []  # taken already
    assert sorted(links.paths) == ["/w/ckpt2/c.bin", "/w/last.pt2", "/w/last.ptx"]


def test_another_name_of_the_file_is_found_by_its_inode():
    links = PendingLinks()
    links.add("/runs/2024/last.pt", _entry("r1", 42))
    links.add("/runs/2024/best.pt", _entry("r2", 42))  # the user's hard link, saved too
    links.add("/runs/2024/other.pt", _entry("r3", 43))
    assert _taken(links, "/runs/current/last.pt") == []  # not a folder or prefix of them
    assert _taken_inode(links, 42) == ["/runs/2024/best.pt", "/runs/2024/last.pt"]
    assert _taken_inode(links, 42) == []
    assert list(links.paths) == ["/runs/2024/other.pt"] and list(links.inodes) == [43]


def test_resolved_links_leave_every_index():
    links = PendingLinks()
    links.add("/w/a.pt", _entry("r1", 1))
    links.add("/w/a.pt", _entry("r2", 2))
    links.add("/w/b.pt", _entry("r3", 3))
    links.resolved("r1")
    assert [e["rid"] for e in links.paths["/w/a.pt"]] == ["r2"]
    assert _taken_inode(links, 1) == []  # r1's inode is no longer indexed
    links.resolved("r2")
    links.resolved("r3")
    links.resolved("unknown")
    assert not links.paths and not links.inodes and not links._sorted and not links._path_of


def test_a_path_linked_again_in_the_process_is_flagged_whatever_the_task():
    links = PendingLinks()
    first, again, other = _entry("r1", 1), _entry("r2", 1), _entry("r3", 3)
    links.add("/w/last.pt", first)
    links.resolved("r1")  # stored; a later task saves the path again
    links.add("/w/last.pt", again)
    links.add("/w/epoch1.pt", other)
    assert "again" not in first and again["again"] and "again" not in other
    assert [p for p, _ in links.take_saved_again()] == ["/w/last.pt"]
    assert list(links.paths) == ["/w/epoch1.pt"]
