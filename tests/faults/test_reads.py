"""Reads verify (contract clause 8): every byte ``get_local_copy`` hands back matches its sha256,
and nothing read from the catalog is trusted as a path. Real stores, real files, no mocks."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from clearml_hooks import Model, OutputModel
from clearml_hooks.store.safe_paths import (
    check_sha256,
    join_inside,
    safe_relpath,
    safe_target_filename,
)

PAYLOAD = b"weights:" + bytes(range(256)) * 64


def _stored_model(task, tmp_path: Path, payload: bytes = PAYLOAD, name: str = "m.pt") -> Model:
    src = tmp_path / "src" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(payload)
    out = OutputModel(task=task, name=name)
    out.update_weights(str(src), async_enable=False)
    assert OutputModel.wait_for_uploads(timeout=120)
    return Model(out.id)


def _stored_package(task, tmp_path: Path) -> Model:
    folder = tmp_path / "src" / "pkg"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 100)
    (folder / "sub" / "b.bin").write_bytes(b"b" * 200)
    out = OutputModel(task=task, name="pkg")
    out.update_weights_package(weights_path=str(folder), async_enable=False)
    assert OutputModel.wait_for_uploads(timeout=120)
    return Model(out.id)


def _blob_path(model: Model) -> Path:
    url = model.url
    assert url.startswith("file://"), url
    return Path(url[len("file://"):])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _tamper(model: Model, sql: str, **params) -> None:
    snap_id = model.snapshots[-1]["id"]
    with model._store.catalog.engine.begin() as conn:
        conn.execute(text(sql), {"sid": snap_id, **params})


def _assert_no_bad_bytes_handed_out(model: Model, cache: Path, bad: bytes) -> None:
    with pytest.raises(ValueError) as err:
        model.get_local_copy(raise_on_error=True)
    assert model.id in str(err.value) and "version 1" in str(err.value)
    assert model.get_local_copy() is None
    if cache.exists():
        assert bad not in _files(cache).values(), "corrupt bytes left in the cache"


# -- corrupt blobs ---------------------------------------------------------------------------------

def test_flipped_byte_in_blob_is_an_error(task, tmp_path, store_dir):
    model = _stored_model(task, tmp_path)
    blob = _blob_path(model)
    flipped = bytearray(blob.read_bytes())
    flipped[100] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(flipped))
    _assert_no_bad_bytes_handed_out(model, store_dir / "cache", bytes(flipped))


def test_truncated_blob_is_an_error(task, tmp_path, store_dir):
    model = _stored_model(task, tmp_path)
    blob = _blob_path(model)
    blob.chmod(0o644)
    with open(blob, "r+b") as f:
        f.truncate(1000)
    _assert_no_bad_bytes_handed_out(model, store_dir / "cache", PAYLOAD[:1000])


def test_corrupt_file_in_a_package_is_an_error(task, tmp_path, store_dir):
    model = _stored_package(task, tmp_path)
    sha = hashlib.sha256(b"b" * 200).hexdigest()
    blob = store_dir / "blobs" / sha[:2] / sha
    blob.chmod(0o644)
    blob.write_bytes(b"c" * 200)
    with pytest.raises(ValueError, match=model.id):
        model.get_local_copy(raise_on_error=True)
    assert b"c" * 200 not in _files(store_dir / "cache").values()


# -- the download cache ------------------------------------------------------------------------

def test_cached_copy_changed_in_place_is_fetched_again(task, tmp_path):
    model = _stored_model(task, tmp_path)
    path = Path(model.get_local_copy(raise_on_error=True))
    assert path.read_bytes() == PAYLOAD
    st = path.stat()
    with open(path, "r+b") as f:  # same size, same inode, and the mtime put back
        f.seek(10)
        f.write(b"XXXX")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = Path(model.get_local_copy(raise_on_error=True))
    assert again.read_bytes() == PAYLOAD


def test_cached_copy_replaced_is_fetched_again(task, tmp_path):
    model = _stored_model(task, tmp_path)
    path = Path(model.get_local_copy(raise_on_error=True))
    path.unlink()
    path.write_bytes(b"other bytes")
    assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == PAYLOAD


def test_unchanged_cache_is_not_rehashed(task, tmp_path, store_dir):
    model = _stored_model(task, tmp_path)
    path = Path(model.get_local_copy(raise_on_error=True))
    record = next((store_dir / "cache").glob("*.verified"))
    before = record.stat().st_mtime_ns
    assert Path(model.get_local_copy(raise_on_error=True)) == path
    assert record.stat().st_mtime_ns == before, "a trusted copy rewrote its record"


def test_corrupt_cache_and_corrupt_blob_is_an_error(task, tmp_path, store_dir):
    model = _stored_model(task, tmp_path)
    path = Path(model.get_local_copy(raise_on_error=True))
    path.write_bytes(b"Y" * len(PAYLOAD))
    blob = _blob_path(model)
    blob.chmod(0o644)
    blob.write_bytes(b"Z" * len(PAYLOAD))
    with pytest.raises(ValueError, match="version 1"):
        model.get_local_copy(raise_on_error=True)
    assert {b"Y" * len(PAYLOAD), b"Z" * len(PAYLOAD)}.isdisjoint(_files(store_dir / "cache").values())


def test_package_zip_is_rebuilt_when_a_file_changes(task, tmp_path):
    import zipfile

    model = _stored_package(task, tmp_path)
    folder = Path(model.get_local_copy(raise_on_error=True))
    (folder / "a.bin").write_bytes(b"z" * 100)
    (folder / "extra.txt").write_bytes(b"not ours")
    archive = model.get_local_copy(extract_archive=False, raise_on_error=True)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["a.bin", "sub/b.bin"]
        assert zf.read("a.bin") == b"a" * 100


# -- tampered catalog rows ----------------------------------------------------------------------

def _outside_snapshot(tmp_path: Path, cache: Path) -> set[str]:
    """Every path under tmp_path outside the cache (the store's own files come and go)."""
    out = set()
    for p in tmp_path.rglob("*"):
        if cache in p.parents or p == cache:
            continue
        out.add(str(p.relative_to(tmp_path)))
    return out


@pytest.mark.parametrize("relpath", ["../../evil", "sub/../../../evil", "ABSOLUTE", "", "./a.bin",
                                     *(["a\\..\\evil", "C:evil"] if os.name == "nt" else [])])
def test_tampered_relpath_is_refused(task, tmp_path, store_dir, relpath):
    model = _stored_package(task, tmp_path)
    if relpath == "ABSOLUTE":
        relpath = str(tmp_path / "outside" / "evil")
    cache = store_dir / "cache"
    before = _outside_snapshot(tmp_path, cache)
    _tamper(model, "UPDATE snapshot_files SET relpath = :r WHERE snapshot_id = :sid "
            "AND relpath = 'a.bin'", r=relpath)
    with pytest.raises(ValueError) as err:
        model.get_local_copy(raise_on_error=True)
    assert model.id in str(err.value) and repr(relpath) in str(err.value)
    assert not (tmp_path / "outside").exists()
    new = _outside_snapshot(tmp_path, cache) - before
    assert not [p for p in new if "evil" in p], new
    assert not list(tmp_path.rglob("*evil*"))


def test_tampered_digest_is_refused(task, tmp_path, store_dir):
    model = _stored_model(task, tmp_path)
    cache = store_dir / "cache"
    before = _outside_snapshot(tmp_path, cache)
    _tamper(model, "UPDATE snapshots SET digest = '../x' WHERE id = :sid")
    with pytest.raises(ValueError) as err:
        model.get_local_copy(raise_on_error=True)
    assert model.id in str(err.value) and "'../x'" in str(err.value)
    new = _outside_snapshot(tmp_path, cache) - before
    assert not [p for p in new if p.startswith("store/x")], new
    assert not (store_dir / "x").exists()


def test_tampered_sha256_cannot_copy_another_file_in(task, tmp_path, store_dir):
    model = _stored_model(task, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    # blobs/<sha[:2]>/<sha> with sha = "../secret.txt" would be store/blobs/../../secret.txt
    for bad in ("../secret.txt", "NOTHEX" * 10 + "abcd", "A" * 64):
        _tamper(model, "UPDATE snapshot_files SET sha256 = :h WHERE snapshot_id = :sid", h=bad)
        with pytest.raises(ValueError) as err:
            model.get_local_copy(raise_on_error=True, force_download=True)
        assert model.id in str(err.value) and repr(bad) in str(err.value)
        assert model.get_local_copy() is None
        if (store_dir / "cache").exists():
            assert b"top secret" not in _files(store_dir / "cache").values()


def test_symlink_planted_in_the_cache_is_refused(task, tmp_path, store_dir):
    model = _stored_package(task, tmp_path)
    folder = Path(model.get_local_copy(raise_on_error=True))
    outside = tmp_path / "outside"
    outside.mkdir()
    import shutil

    shutil.rmtree(folder / "sub")
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        model.get_local_copy(raise_on_error=True)
    assert list(outside.iterdir()) == []


# -- the checks themselves -----------------------------------------------------------------------

WINDOWS = os.name == "nt"


@pytest.mark.parametrize("bad", ["../../x", "/etc/passwd", "a/../../b", "a//b", "", "a\x00b", ".",
                                 "a/./b", None, 5,
                                 *(["a\\b", "C:\\x", "C:x", "..\\..\\x"] if WINDOWS else [])])
def test_safe_relpath_rejects(bad):
    with pytest.raises(ValueError, match="model m1"):
        safe_relpath(bad, model="m1")


def test_safe_relpath_accepts_plain_paths(tmp_path):
    assert safe_relpath("a/b/c.bin") == os.path.join("a", "b", "c.bin")
    assert safe_relpath("..hidden/x..y") == os.path.join("..hidden", "x..y")
    assert join_inside(str(tmp_path), "a/b") == str(tmp_path / "a" / "b")


@pytest.mark.skipif(WINDOWS, reason="a backslash is a separator on Windows")
@pytest.mark.parametrize("name", ["a\\b.pt", "..\\..\\x", "C:x.pt", "C:\\x"])
def test_a_backslash_or_colon_is_part_of_a_posix_file_name(tmp_path, name):
    """On POSIX these are one file name (a model saved under it is read back), and stay
    inside the folder."""
    path = join_inside(str(tmp_path), name)
    assert os.path.dirname(path) == str(tmp_path) and os.path.basename(path) == name
    assert safe_target_filename(name) == name


@pytest.mark.parametrize("bad", ["../../x", "/abs/x", "a/b", "..", ".", "", "x\x00",
                                 *(["a\\b"] if WINDOWS else [])])
def test_safe_target_filename_rejects(bad):
    with pytest.raises(ValueError, match="target_filename"):
        safe_target_filename(bad)


def test_safe_target_filename_accepts_names():
    assert safe_target_filename("model.pt") == "model.pt"
    assert safe_target_filename(Path("model.pt")) == "model.pt"


@pytest.mark.parametrize("bad", ["../x", "A" * 64, "a" * 63, "g" * 64, None])
def test_check_sha256_rejects(bad):
    with pytest.raises(ValueError, match="not a sha256"):
        check_sha256(bad, model="m1")


# -- a team store: the object in S3 is verified too ---------------------------------------------

def test_corrupt_object_in_s3_is_an_error(team_store, tmp_path):
    from clearml_hooks import Task
    from clearml_hooks.store.blobs import FsspecBlobStore

    with Task.init(project_name="faults", task_name="s3-corrupt") as task:
        model = _stored_model(task, tmp_path)
        blobs = FsspecBlobStore(f"s3://{team_store['bucket']}/models")
        sha = hashlib.sha256(PAYLOAD).hexdigest()
        blobs.fs.pipe_file(blobs._path(sha), PAYLOAD[:-1] + b"!")
        with pytest.raises(ValueError) as err:
            model.get_local_copy(raise_on_error=True)
        assert model.id in str(err.value) and sha in str(err.value)
        cache = Path(task.store.cache_dir)
        if cache.exists():
            assert PAYLOAD[:-1] + b"!" not in _files(cache).values()
        blobs.fs.pipe_file(blobs._path(sha), PAYLOAD)
        assert Path(model.get_local_copy(raise_on_error=True)).read_bytes() == PAYLOAD


def test_reading_through_a_blob_url_never_creates_its_folder(tmp_path):
    """A catalog row may name a blob folder on another machine or one long gone (a store
    copied elsewhere): opening it to read must not create that folder (it did, under /tmp)."""
    from clearml_hooks.store.blobs import open_blob_store

    gone = tmp_path / "elsewhere" / "blobs"
    store = open_blob_store("file://" + str(gone))
    assert not store.exists("a" * 64)
    with pytest.raises(FileNotFoundError):
        store.fetch("a" * 64, str(tmp_path / "out"))
    assert store.sweep_incoming() == 0
    assert not gone.exists() and not gone.parent.exists()
    sha, _ = store.store_stream(io.BytesIO(b"bytes"))  # the first write makes it
    assert (gone / sha[:2] / sha).read_bytes() == b"bytes"
