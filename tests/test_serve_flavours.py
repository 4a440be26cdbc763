"""clearml-hooks serve loads every framework it claims: scikit-learn / joblib, XGBoost, LightGBM,
CatBoost, TorchScript and Keras. One real server process follows the registry; each test
registers a model of one framework under the served tag, waits for the server to swap to it, and
checks the KServe V2 answer against the framework's own prediction (so every swap is also a
hot swap across frameworks).

A framework that is not installed skips its test, visibly. CI runs this file in an env that has
every framework and lists them in CLEARML_HOOKS_REQUIRE_FRAMEWORK, where a missing one fails the
run instead (tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import urllib.error
import urllib.request

import pytest

from tests.eventutil import Proc, get_json, wait_for

np = pytest.importorskip("numpy")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

X = [[0.5, 1.0], [2.0, -1.0], [3.0, 4.0]]


def _infer(url: str, rows: list[list[float]]) -> dict:
    body = json.dumps({"inputs": [{"name": "x", "shape": [len(rows), len(rows[0])],
                                   "datatype": "FP32",
                                   "data": [v for r in rows for v in r]}]}).encode()
    req = urllib.request.Request(url + "/infer", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"HTTP {exc.code}: {exc.read()!r}") from exc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One serve process for the module, following tag "prod" of srv/reg in its own store."""
    home = tmp_path_factory.mktemp("flavours") / "store"
    # no KERAS_BACKEND: the server picks an installed Keras backend itself
    env = {"CLEARML_HOOKS_HOME": str(home), "KERAS_BACKEND": ""}
    proc = Proc("serve", "--project", "srv", "--name", "reg", "--tag", "prod",
                "--endpoint", "m", "--port", "0", env=env)
    try:
        line = proc.wait_line("clearml-hooks serve: http://", timeout=60)
        url = re.search(r"(http://\S+/v2/models/m)", line).group(1)
        base = url.rsplit("/v2/", 1)[0]
        # nothing registered yet: live, not ready, and it says it waits
        assert get_json(base + "/v2/health/live")[0] == 200
        assert get_json(base + "/v2/health/ready")[0] == 503
        assert any("no model matches" in ln for ln in proc.lines)
        yield {"url": url, "base": base, "home": str(home), "proc": proc}
    finally:
        proc.stop()


def _register(server, monkeypatch, path, framework: str) -> str:
    monkeypatch.setenv("CLEARML_HOOKS_HOME", server["home"])
    from clearml_hooks import Model, OutputModel, Task

    task = Task.init(project_name="srv", task_name="train", auto_connect_frameworks=False)
    try:
        om = OutputModel(task=task, name="reg", framework=framework)
        om.update_weights(str(path), async_enable=False)
        Model(om.id).tags = ["prod"]
        return om.id
    finally:
        task.close()


def _serve_and_check(server, monkeypatch, path, framework: str, expected) -> dict:
    model_id = _register(server, monkeypatch, path, framework)

    def swapped():
        status, meta = get_json(server["url"])
        return status == 200 and meta["parameters"]["model_id"] == model_id and meta

    # the first model of a framework also imports the framework in the server (seconds)
    meta = wait_for(swapped, timeout=60, interval=0.1)
    assert meta["parameters"]["last_error"] is None, meta
    assert meta["platform"] == framework.lower()
    out = _infer(server["url"], X)
    assert out["parameters"]["model_id"] == model_id
    got = np.asarray(out["outputs"][0]["data"], dtype=float)
    want = np.asarray(expected, dtype=float).ravel()
    assert got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-5), (got, want)
    assert out["outputs"][0]["shape"] == list(np.asarray(expected).shape)
    return out


def _xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype(np.float32)
    y = (2.0 * x[:, 0] - x[:, 1] + 0.5).astype(np.float32)
    return x, y


def test_sklearn_joblib(server, monkeypatch, tmp_path):
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.linear_model import LinearRegression

    x, y = _xy()
    model = LinearRegression().fit(x, y)
    path = tmp_path / "lin.joblib"
    joblib.dump(model, path)
    _serve_and_check(server, monkeypatch, path, "ScikitLearn",
                     model.predict(np.asarray(X, dtype=np.float32)))


def test_xgboost_native(server, monkeypatch, tmp_path):
    xgboost = pytest.importorskip("xgboost")
    x, y = _xy()
    booster = xgboost.train({"max_depth": 2, "nthread": 1}, xgboost.DMatrix(x, label=y),
                            num_boost_round=5)
    path = tmp_path / "model.json"
    booster.save_model(str(path))
    _serve_and_check(server, monkeypatch, path, "XGBoost",
                     booster.predict(xgboost.DMatrix(np.asarray(X, dtype=np.float32))))


def test_lightgbm_native(server, monkeypatch, tmp_path):
    lightgbm = pytest.importorskip("lightgbm")
    x, y = _xy()
    booster = lightgbm.train({"objective": "regression", "num_leaves": 4, "min_data_in_leaf": 2,
                              "verbose": -1, "num_threads": 1},
                             lightgbm.Dataset(x, label=y), num_boost_round=5)
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    _serve_and_check(server, monkeypatch, path, "LightGBM",
                     booster.predict(np.asarray(X, dtype=np.float32)))


def test_catboost_native(server, monkeypatch, tmp_path):
    catboost = pytest.importorskip("catboost")
    x, y = _xy()
    model = catboost.CatBoostRegressor(iterations=5, depth=2, verbose=False, thread_count=1,
                                       allow_writing_files=False).fit(x, y)
    path = tmp_path / "model.cbm"
    model.save_model(str(path))
    _serve_and_check(server, monkeypatch, path, "CatBoost",
                     model.predict(np.asarray(X, dtype=np.float32)))


def test_torchscript(server, monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.jit.script(torch.nn.Linear(2, 1).eval())
    path = tmp_path / "model.pt"
    module.save(str(path))
    with torch.no_grad():
        expected = module(torch.tensor(X, dtype=torch.float32)).numpy()
    _serve_and_check(server, monkeypatch, path, "PyTorch", expected)


def _keras_backend() -> str | None:
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    for backend, module in (("tensorflow", "tensorflow"), ("torch", "torch"), ("jax", "jax")):
        if importlib.util.find_spec(module) is not None:
            return backend
    return None


def test_keras(server, monkeypatch, tmp_path):
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    backend = _keras_backend()
    if backend is None:
        pytest.skip("no Keras backend installed")
    monkeypatch.setenv("KERAS_BACKEND", backend)
    keras = pytest.importorskip("keras")
    inputs = keras.Input(shape=(2,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="tanh")(inputs))
    path = tmp_path / "model.keras"
    model.save(str(path))
    expected = np.asarray(model.predict(np.asarray(X, dtype=np.float32), verbose=0))
    _serve_and_check(server, monkeypatch, path, "Keras", expected)


def test_tensorflow_saved_model_folder(server, monkeypatch, tmp_path):
    """A SavedModel folder (a package version): Keras 3 cannot load one, so the server calls
    its serving_default signature through TensorFlow."""
    tf = pytest.importorskip("tensorflow")

    class Affine(tf.Module):
        def __init__(self):
            self.w = tf.Variable([[1.5], [-2.0]])
            self.b = tf.Variable([0.25])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return {"y": tf.matmul(x, self.w) + self.b}

    module = Affine()
    folder = tmp_path / "saved"
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.__call__})
    expected = module(tf.constant(X, dtype=tf.float32))["y"].numpy()
    _serve_and_check(server, monkeypatch, folder, "TensorFlow", expected)


def test_a_new_version_of_the_served_model_is_served(server, monkeypatch, tmp_path):
    """The served model gets a new version (same model, new snapshot): the server swaps to it."""
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.linear_model import LinearRegression

    x, y = _xy()
    one, two = tmp_path / "v1.joblib", tmp_path / "v2.joblib"
    joblib.dump(LinearRegression().fit(x, y), one)
    second = LinearRegression().fit(x, 3 * y)
    joblib.dump(second, two)
    model_id = _register(server, monkeypatch, one, "ScikitLearn")
    wait_for(lambda: get_json(server["url"])[1]["parameters"]["model_id"] == model_id, timeout=60)
    from clearml_hooks import OutputModel, Task

    task = Task.init(project_name="srv", task_name="train", auto_connect_frameworks=False)
    try:
        OutputModel(task=task, base_model_id=model_id).update_weights(str(two), async_enable=False)
    finally:
        task.close()
    wait_for(lambda: get_json(server["url"])[1]["versions"] == ["2"], timeout=30)
    out = _infer(server["url"], X)
    assert out["model_version"] == "2" and out["parameters"]["model_id"] == model_id
    assert np.allclose(out["outputs"][0]["data"],
                       second.predict(np.asarray(X, dtype=np.float32)), rtol=1e-4)


def test_tampered_blob_is_refused_and_the_old_model_kept(server, monkeypatch, tmp_path):
    """The bytes served are the bytes the catalog recorded: a blob changed in the store after
    it was registered fails its sha256 check, and the server keeps the model it has."""
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.linear_model import LinearRegression

    status, before = get_json(server["url"])
    assert status == 200
    old_id = before["parameters"]["model_id"]
    x, y = _xy()
    path = tmp_path / "tampered.joblib"
    joblib.dump(LinearRegression().fit(x, y), path)
    monkeypatch.setenv("CLEARML_HOOKS_HOME", server["home"])
    from clearml_hooks import Model, OutputModel, Task
    from clearml_hooks.models import default_store

    task = Task.init(project_name="srv", task_name="train", auto_connect_frameworks=False)
    try:
        om = OutputModel(task=task, name="reg", framework="ScikitLearn")
        om.update_weights(str(path), async_enable=False)  # not tagged yet: not served
        store = default_store()
        snap = store.catalog.snapshot(store.catalog.get_model(om.id)["latest_snapshot_id"])
        blob = store.blobs.path_for(snap["files"][0]["sha256"])
        data = bytearray(open(blob, "rb").read())
        data[-2] ^= 0xFF  # same size, other bytes
        os.chmod(blob, 0o644)
        with open(blob, "wb") as f:
            f.write(data)
        Model(om.id).tags = ["prod"]
    finally:
        task.close()
    line = server["proc"].wait_line(f"model {om.id} (reg) failed to load", timeout=30)
    assert "sha256" in line and f"still serving model {old_id}" in line, line
    status, meta = get_json(server["url"])
    assert meta["parameters"]["model_id"] == old_id
    assert om.id in meta["parameters"]["last_error"] and "sha256" in meta["parameters"]["last_error"]
    assert _infer(server["url"], X)["parameters"]["model_id"] == old_id
