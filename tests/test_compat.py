"""ClearML names that training scripts import, and bad input the API must refuse cleanly."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from clearml_hooks import Task

# -- StorageManager ---------------------------------------------------------------------------------


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on 127.0.0.1 (port 0) serving a folder; stopped after the test."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_storage_manager_is_exported():
    import clearml_hooks
    from clearml_hooks import StorageManager
    from clearml_hooks.storage_manager import StorageManager as direct

    assert StorageManager is direct is clearml_hooks.StorageManager


def test_get_local_copy_of_local_path_and_file_url(tmp_path):
    from clearml_hooks import StorageManager

    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert StorageManager.get_local_copy(str(f)) == str(f)
    assert StorageManager.get_local_copy("file://" + str(f)) == str(f)
    assert StorageManager.get_local_copy(str(tmp_path / "missing")) is None


def test_get_local_copy_over_http_downloads_once(http_folder):
    from clearml_hooks import StorageManager

    root, base = http_folder
    (root / "weights.pt").write_bytes(b"x" * 100_000)
    path = StorageManager.get_local_copy(base + "/weights.pt")
    assert path is not None and path.endswith("weights.pt")
    with open(path, "rb") as fh:
        assert fh.read() == b"x" * 100_000
    (root / "weights.pt").write_bytes(b"new")
    assert StorageManager.get_local_copy(base + "/weights.pt") == path  # cached
    with open(path, "rb") as fh:
        assert fh.read() == b"x" * 100_000
    forced = StorageManager.get_local_copy(base + "/weights.pt", force_download=True)
    with open(forced, "rb") as fh:
        assert fh.read() == b"new"
    assert StorageManager.get_local_copy(base + "/nope.pt") is None


def test_get_local_copy_over_http_extracts_archive(http_folder, tmp_path):
    import zipfile

    from clearml_hooks import StorageManager

    root, base = http_folder
    with zipfile.ZipFile(root / "data.zip", "w") as zf:
        zf.writestr("inner/a.txt", "hello")
    folder = StorageManager.get_local_copy(base + "/data.zip")
    with open(f"{folder}/inner/a.txt") as fh:
        assert fh.read() == "hello"
    raw = StorageManager.get_local_copy(base + "/data.zip", extract_archive=False)
    assert zipfile.is_zipfile(raw)


def test_upload_file_to_folder_and_fsspec_url(tmp_path):
    import fsspec

    from clearml_hooks import StorageManager

    src = tmp_path / "model.bin"
    src.write_bytes(b"weights")
    dest = tmp_path / "out" / "sub" / "m.bin"
    assert StorageManager.upload_file(str(src), str(dest)) == str(dest)
    assert dest.read_bytes() == b"weights"
    url = StorageManager.upload_file(str(src), "file://" + str(tmp_path / "out2") + "/")
    assert (tmp_path / "out2" / "model.bin").read_bytes() == b"weights"
    assert url.endswith("/model.bin")
    StorageManager.upload_file(str(src), "memory://compat-test/deep/m.bin")
    assert fsspec.filesystem("memory").cat_file("/compat-test/deep/m.bin") == b"weights"
    with pytest.raises(ValueError):
        StorageManager.upload_file(str(tmp_path / "missing"), str(dest))


def test_download_folder(tmp_path):
    from clearml_hooks import StorageManager

    remote = tmp_path / "remote"
    (remote / "a" / "b").mkdir(parents=True)
    (remote / "top.txt").write_text("1")
    (remote / "a" / "b" / "deep.txt").write_text("2")
    out = StorageManager.download_folder(str(remote), str(tmp_path / "local"))
    assert out == str(tmp_path / "local")
    assert (tmp_path / "local" / "top.txt").read_text() == "1"
    assert (tmp_path / "local" / "a" / "b" / "deep.txt").read_text() == "2"
    only = StorageManager.download_folder("file://" + str(remote), str(tmp_path / "only"),
                                          match_wildcard="*.txt")
    assert only and (tmp_path / "only" / "top.txt").exists()


# -- SeriesInfo, Task surface ---------------------------------------------------------------------


def test_series_info_import_path():
    from clearml_hooks.model_reporting import SeriesInfo as ours
    from clearml_hooks.utilities.plotly_reporter import SeriesInfo

    info = SeriesInfo("train", [(0, 1.0), (1, 0.5)])
    assert SeriesInfo is ours
    assert (info.name, info.data, info.labels) == ("train", [(0, 1.0), (1, 0.5)], None)
    assert SeriesInfo(name="v", data=[], labels=["a"]).labels == ["a"]


def test_task_compat_methods():
    task = Task.init(project_name="compat", task_name="surface")
    try:
        assert task.get_registered_artifacts() == {}
        assert task.set_packages(["torch==2.0"]) is None
        assert task.set_packages("requirements.txt") is None
        assert Task.running_locally() is True and task.running_locally() is True
        assert task.get_status() == "in_progress"
    finally:
        task.close()
    assert task.get_status() == "completed"


def test_query_tasks_newest_first_with_filters():
    ids = []
    for project, name, tags in [("qa", "train-small", ["a"]), ("qa", "train-big", ["b"]),
                                ("other", "eval", ["a", "b"])]:
        task = Task.init(project_name=project, task_name=name, tags=tags)
        task.wait_registered()
        ids.append(task.id)
        task.close()
    small, big, ev = ids
    assert Task.query_tasks() == [ev, big, small]
    assert Task.query_tasks(project_name="qa") == [big, small]
    assert Task.query_tasks(task_name="train") == [big, small]
    assert Task.query_tasks(task_name="^eval$") == [ev]
    assert Task.query_tasks(tags=["a"]) == [ev, small]
    assert Task.query_tasks(tags=["a", "-b"]) == [small]
    assert Task.query_tasks(project_name="qa", tags=["b"]) == [big]
    assert Task.query_tasks(project_name="nope") == []


# -- names deliberately not provided ----------------------------------------------------------------


def test_from_import_dataset_says_what_to_use_instead():
    with pytest.raises(ImportError, match=r"records models.*not datasets.*clearml-data.*DVC"):
        from clearml_hooks import Dataset  # noqa: F401


def test_attribute_dataset_is_an_attribute_error_with_the_message():
    import clearml_hooks

    with pytest.raises(AttributeError, match=r"records models.*not datasets.*clearml-data.*DVC"):
        clearml_hooks.Dataset  # noqa: B018
    assert not hasattr(clearml_hooks, "Dataset")
    assert getattr(clearml_hooks, "PipelineController", None) is None
    with pytest.raises(AttributeError, match=r"has no attribute 'Nope'"):
        clearml_hooks.Nope  # noqa: B018


def test_every_not_provided_name_has_its_message():
    from clearml_hooks.not_provided import NOT_PROVIDED

    for name in NOT_PROVIDED:
        with pytest.raises(ImportError, match=f"clearml_hooks.{name} is not provided"):
            exec(f"from clearml_hooks import {name}", {})


# -- bad input ----------------------------------------------------------------------------------


def test_query_models_metadata_must_be_a_mapping():
    from clearml_hooks import Model

    with pytest.raises(ValueError, match=r"metadata must be a dict of key -> value"):
        Model.query_models(metadata="x")
    with pytest.raises(ValueError, match=r"metadata must be a dict"):
        Model.query_models(metadata=["a", "b"])
    assert Model.query_models(metadata={"k": "v"}) == []


@pytest.mark.parametrize("kwargs", [{"offset": 2**70}, {"max_results": 2**64},
                                    {"offset": -1}, {"max_results": -5}, {"offset": 1.5}])
def test_query_models_counts_beyond_64_bits_are_value_errors(kwargs):
    from clearml_hooks import Model

    with pytest.raises(ValueError, match=r"(offset|max_results) must be"):
        Model.query_models(**kwargs)


def test_query_models_largest_64_bit_counts_work():
    from clearml_hooks import Model

    assert Model.query_models(offset=2**63 - 1, max_results=2**63 - 1) == []


def test_cli_limit_beyond_64_bits_is_one_line_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    from clearml_hooks import Task

    Task.init(project_name="cli", task_name="t").close()  # a store at CLEARML_HOOKS_HOME
    proc = subprocess.run(
        [sys.executable, "-m", "clearml_hooks", "models", "list",
         "--limit", "99999999999999999999999"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "max_results must be between 0 and 2**63 - 1" in lines[0]


def test_set_last_iteration_beyond_64_bits_is_a_value_error():
    task = Task.init(project_name="compat", task_name="iterations")
    try:
        with pytest.raises(ValueError, match=r"iterations must fit in 64 bits"):
            task.set_last_iteration(2**70)
        with pytest.raises(ValueError, match=r"iterations must fit in 64 bits"):
            task.set_last_iteration(-(2**63) - 1)
        task.set_last_iteration(2**63 - 1)
        assert task.get_last_iteration() == 2**63 - 1
        with pytest.raises(ValueError, match=r"64 bits"):
            task.get_logger().report_scalar("loss", "train", 0.1, iteration=2**64)
    finally:
        task.close()
