"""scikit-learn / joblib: ``joblib.dump`` / ``joblib.load`` captured end to end, real joblib.

Runs on joblib 1.3 (scikit-learn 1.3) and the newest joblib (>= 1.5, which renamed the
internals ClearML hooks): the binding hooks only the public ``dump`` / ``load``.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import tempfile
from pathlib import Path

import joblib
import joblib.numpy_pickle
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.conftest import run_script
from tests.frameworks import common
from tests.frameworks.common import file_name, inputs, outputs, run_training_script, stored_bytes

ORIGINAL_DUMP, ORIGINAL_LOAD = joblib.numpy_pickle.dump, joblib.numpy_pickle.load
X, Y = make_classification(n_samples=200, n_features=8, random_state=0)


@pytest.fixture(scope="module")
def estimator():
    return LogisticRegression(max_iter=200).fit(X, Y)


start = functools.partial(common.start, "sklearn")
assert_one_output = functools.partial(common.assert_one_output,
                                      framework="ScikitLearn", file_url=True)


# -- save side ----------------------------------------------------------------------------------


def test_dump_to_str_path(tmp_path, estimator):
    task = start(tmp_path)
    path = tmp_path / "model.joblib"
    returned = joblib.dump(estimator, str(path))
    assert returned == [str(path)]  # joblib's own return value, untouched
    assert_one_output(task, path)


def test_dump_to_pathlib_path_records_the_full_path(tmp_path, estimator):
    task = start(tmp_path)
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "model.pkl"
    joblib.dump(estimator, path)
    m = assert_one_output(task, path)
    assert m.source == str(path)  # the full path, not the base name


@pytest.mark.parametrize("suffix", [".gz", ".z", ".xz", ".lzma", ".bz2"])
def test_compression_inferred_from_the_suffix(tmp_path, estimator, suffix):
    task = start(tmp_path)
    path = tmp_path / f"model.pkl{suffix}"
    joblib.dump(estimator, path)
    raw = path.read_bytes()
    assert not raw.startswith(b"\x80")  # compressed, not a plain pickle
    assert_one_output(task, path)
    np.testing.assert_array_equal(joblib.load(path).predict(X), estimator.predict(X))
    [inp] = inputs(task)
    assert inp == outputs(task)[0]  # the load is linked to the model this task wrote


@pytest.mark.parametrize("compress", [3, ("zlib", 3), ("lzma", 1), True])
def test_explicit_compression(tmp_path, estimator, compress):
    task = start(tmp_path)
    path = tmp_path / "model.joblib"
    joblib.dump(estimator, path, compress=compress)
    assert_one_output(task, path)


def test_dump_to_named_file_object(tmp_path, estimator):
    task = start(tmp_path)
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        joblib.dump(estimator, f)
    assert_one_output(task, path)


def test_dump_into_a_compressing_file_object_is_not_captured_truncated(tmp_path, estimator):
    """``gzip.open`` writes its last block and trailer on close, after joblib.dump returned."""
    task = start(tmp_path)
    path = tmp_path / "model.pkl.gz"
    with gzip.open(path, "wb") as f:
        joblib.dump(estimator, f)
    assert outputs(task) == []
    with gzip.open(path, "rb") as f:  # reading one is fine: the file is complete
        np.testing.assert_array_equal(joblib.load(f).predict(X), estimator.predict(X))
    [inp] = inputs(task)
    assert file_name(inp) == "model.pkl.gz"


def test_dump_into_a_named_temporary_file(tmp_path, estimator):
    task = start(tmp_path)
    with tempfile.NamedTemporaryFile(dir=tmp_path, suffix=".joblib", delete=False) as f:
        joblib.dump(estimator, f)
    assert_one_output(task, Path(f.name))


def test_dump_to_unnamed_stream_is_not_captured(tmp_path, estimator):
    task = start(tmp_path)
    buf = io.BytesIO()
    joblib.dump(estimator, buf)
    assert buf.getvalue()
    assert outputs(task) == []
    assert task.capture_stats.get("skipped_stream") == 1


def test_each_dump_of_a_path_is_a_snapshot_of_one_model(tmp_path, estimator):
    task = start(tmp_path)
    path = tmp_path / "checkpoint.joblib"
    for i in range(3):
        task.set_last_iteration(i)
        joblib.dump(estimator, path)
    [m] = outputs(task)
    assert [s["version"] for s in m.snapshots] == [1, 2, 3]
    assert [s["iteration"] for s in m.snapshots] == [0, 1, 2]


# -- framework of the dumped / loaded object -----------------------------------------------------


def test_framework_is_that_of_the_object(tmp_path, estimator):
    task = start(tmp_path)
    joblib.dump(make_pipeline(StandardScaler(), estimator), tmp_path / "pipe.joblib")
    joblib.dump({"model": estimator, "classes": [0, 1]}, tmp_path / "bundle.joblib")
    joblib.dump(np.arange(10), tmp_path / "array.joblib")
    frameworks = {file_name(m): m.framework for m in outputs(task)}
    assert frameworks == {"pipe.joblib": "ScikitLearn", "bundle.joblib": "ScikitLearn",
                          "array.joblib": "ScikitLearn"}


# -- load side ------------------------------------------------------------------------------------


def test_load_registers_an_input_model(tmp_path, estimator):
    path = tmp_path / "model.joblib"
    joblib.dump(estimator, path)  # written before any task: an unknown file
    task = start(tmp_path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict(X), estimator.predict(X))
    [inp] = inputs(task)
    assert inp.framework == "ScikitLearn"
    assert file_name(inp) == "model.joblib"
    assert outputs(task) == []


def test_load_from_named_file_object_and_mmap(tmp_path):
    array_path = tmp_path / "arrays.joblib"
    joblib.dump({"w": np.arange(1000.0)}, array_path)
    task = start(tmp_path)
    with open(array_path, "rb") as f:
        assert joblib.load(f)["w"].sum() == np.arange(1000.0).sum()
    assert joblib.load(array_path, mmap_mode="r")["w"][-1] == 999.0
    [inp] = inputs(task)  # the same unchanged file loaded twice: one input
    assert file_name(inp) == "arrays.joblib"


def test_save_then_load_in_one_task_links_the_same_model(tmp_path, estimator):
    task = start(tmp_path)
    path = tmp_path / "model.joblib"
    joblib.dump(estimator, path)
    joblib.load(path)
    [out] = outputs(task)
    [inp] = inputs(task)
    assert inp == out


# -- what is never captured ---------------------------------------------------------------------


def square(a):
    return a ** 2


def test_memory_cache_files_are_never_captured(tmp_path, estimator):
    task = start(tmp_path)
    memory = joblib.Memory(tmp_path / "cache", verbose=0)
    cached = memory.cache(square)
    first = cached(np.arange(50))  # a miss: Memory dumps the result
    second = cached(np.arange(50))  # a hit: Memory loads it
    np.testing.assert_array_equal(first, second)
    assert any(name == "output.pkl" for _, _, names in os.walk(tmp_path / "cache") for name in names)
    joblib.dump(estimator, tmp_path / "model.joblib")  # the hooks are on
    assert [file_name(m) for m in outputs(task)] == ["model.joblib"]
    assert inputs(task) == []


def test_parallel_memmapping_is_never_captured(tmp_path):
    task = start(tmp_path)
    big = np.ones(200_000)
    sums = joblib.Parallel(n_jobs=2, max_nbytes="1K", temp_folder=str(tmp_path / "mm"))(
        joblib.delayed(np.sum)(big) for _ in range(2))
    assert sums == [200_000.0, 200_000.0]
    assert outputs(task) == []
    assert inputs(task) == []


IMPORT_AFTER_INIT = """
import sys
from clearml_hooks import Task
task = Task.init(project_name="late", task_name="t", output_uri=sys.argv[1])
import joblib, joblib._memmapping_reducer, numpy as np
assert joblib._memmapping_reducer.dump is joblib.dump  # joblib's own reference is the hook
big = np.ones(200_000)
print([float(s) for s in joblib.Parallel(n_jobs=2, max_nbytes="1K")(joblib.delayed(np.sum)(big) for _ in range(2))])
memory = joblib.Memory(sys.argv[2], verbose=0)
memory.cache(np.cumsum)(big)
memory.cache(np.cumsum)(big)
task.flush(wait_for_uploads=True)
print("models", len(task.models["output"]), len(task.models["input"]), task.capture_stats)
"""


def test_joblib_imported_after_task_init_still_ignores_its_own_files(tmp_path):
    """Task.init first: joblib's memmapping reducer binds the hooked ``dump`` at import."""
    script = tmp_path / "late.py"
    script.write_text(IMPORT_AFTER_INIT)
    proc = run_script(script, str(tmp_path / "store"), str(tmp_path / "cache"),
                      env={"CLEARML_HOOKS_STRICT": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "[200000.0, 200000.0]" in proc.stdout
    assert "models 0 0" in proc.stdout


def test_a_failing_dump_raises_the_frameworks_error_and_captures_nothing(tmp_path, estimator):
    task = start(tmp_path)
    with pytest.raises(FileNotFoundError):
        joblib.dump(estimator, tmp_path / "missing-dir" / "model.joblib")
    assert outputs(task) == []
    assert task.capture_stats["agent_errors"] == 0


# -- filters ------------------------------------------------------------------------------------


def dump_both(tmp_path, estimator):
    joblib.dump(estimator, tmp_path / "keep.joblib")
    joblib.dump(estimator, tmp_path / "drop.pkl")
    joblib.load(tmp_path / "drop.pkl")


@pytest.mark.parametrize("key", ["joblib", "scikit"])
def test_wildcard_under_either_key(tmp_path, estimator, key):
    task = start(tmp_path, {key: "*.joblib"})
    dump_both(tmp_path, estimator)
    assert [file_name(m) for m in outputs(task)] == ["keep.joblib"]
    assert inputs(task) == []


def test_joblib_key_wins_over_scikit(tmp_path, estimator):
    task = start(tmp_path, {"scikit": "*.pkl", "joblib": "*.joblib"})
    dump_both(tmp_path, estimator)
    assert [file_name(m) for m in outputs(task)] == ["keep.joblib"]


@pytest.mark.parametrize("key", ["joblib", "scikit"])
def test_disabled_by_either_key(tmp_path, estimator, key):
    task = start(tmp_path, {key: False})
    dump_both(tmp_path, estimator)
    assert outputs(task) == []
    assert joblib.dump is ORIGINAL_DUMP  # a disabled binding patches nothing


def test_disabled_from_the_environment_by_the_scikit_key(tmp_path, estimator, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_DISABLED", "scikit")
    task = start(tmp_path)
    dump_both(tmp_path, estimator)
    assert outputs(task) == [] and inputs(task) == []


# -- patching -----------------------------------------------------------------------------------


def test_aliases_share_one_wrapper_and_are_restored(tmp_path):
    task = start(tmp_path)
    assert joblib.dump is joblib.numpy_pickle.dump
    assert joblib.dump is not ORIGINAL_DUMP
    assert joblib.load is joblib.numpy_pickle.load
    assert joblib.load is not ORIGINAL_LOAD
    assert pickle.loads(pickle.dumps(joblib.dump)) is joblib.dump
    task.close()
    assert joblib.dump is joblib.numpy_pickle.dump is ORIGINAL_DUMP
    assert joblib.load is joblib.numpy_pickle.load is ORIGINAL_LOAD


# -- the training script ------------------------------------------------------------------------


def test_training_script_end_to_end(tmp_path):
    out, models = run_training_script("sklearn", tmp_path,
                                      expect="accuracy", query_sees_outputs=True)
    assert set(models) == {("output", "checkpoint.joblib"), ("output", "model.pkl.gz"),
                           ("input", "model.pkl.gz")}
    ckpt, final = models["output", "checkpoint.joblib"], models["output", "model.pkl.gz"]
    assert [s["iteration"] for s in ckpt.snapshots] == [0, 1, 2]
    assert all(s["state"] == "ready" for s in ckpt.snapshots)
    assert final.framework == ckpt.framework == "ScikitLearn"
    assert stored_bytes(final) == (out / "model.pkl.gz").read_bytes()
    assert stored_bytes(ckpt) == (out / "checkpoint.joblib").read_bytes()
    assert models["input", "model.pkl.gz"] == final  # lineage: the loaded file is the saved model
