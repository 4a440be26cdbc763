"""clearml-hooks serve: KServe V2 REST over a real server process that follows the registry,
hot-swapping scikit-learn models under a client loop, and keeping the old model when a new one
fails to load."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.eventutil import Proc, get_json, wait_for

sklearn = pytest.importorskip("sklearn")
np = pytest.importorskip("numpy")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


def _infer(url: str, rows: list[list[float]]) -> list[float]:
    body = json.dumps({"id": "r1", "inputs": [{"name": "x", "shape": [len(rows), len(rows[0])],
                                               "datatype": "FP64",
                                               "data": [v for r in rows for v in r]}]}).encode()
    req = urllib.request.Request(url + "/infer", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        out = json.loads(resp.read())
    assert out["id"] == "r1" and out["outputs"][0]["shape"] == [len(rows)]
    return out["outputs"][0]["data"]


def _linear(tmp_path, slope: float):
    import joblib
    from sklearn.linear_model import LinearRegression

    x = np.arange(10, dtype=float).reshape(-1, 1)
    model = LinearRegression().fit(x, slope * x.ravel())
    path = tmp_path / f"model_{slope:g}.joblib"
    joblib.dump(model, path)
    return path


def test_serve_hot_swaps_under_load_and_keeps_old_on_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "home"))
    one, two = _linear(tmp_path, 1.0), _linear(tmp_path, 2.0)
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"this is not a pickle")
    from clearml_hooks import Model, OutputModel, Task

    task = Task.init(project_name="srv", task_name="train", auto_connect_frameworks=False)

    def register(path, tag="prod"):
        om = OutputModel(task=task, name="reg", framework="ScikitLearn")
        om.update_weights(str(path), async_enable=False)
        Model(om.id).tags = [tag]
        return om.id

    first = register(one)
    server = Proc("serve", "--project", "srv", "--name", "reg", "--tag", "prod",
                  "--endpoint", "reg", "--port", "0")
    stop = threading.Event()
    results: list[float] = []
    failures: list[str] = []
    try:
        line = server.wait_line("clearml-hooks serve: http://", timeout=60)
        url = re.search(r"(http://\S+/v2/models/reg)", line).group(1)
        base = url.rsplit("/v2/", 1)[0]
        assert get_json(base + "/v2/health/ready") == (200, {"ready": True})
        status, meta = get_json(url)
        assert status == 200 and meta["parameters"]["model_id"] == first
        assert meta["versions"] == ["1"]
        assert _infer(url, [[3.0], [4.0]]) == pytest.approx([3.0, 4.0])
        assert get_json(base + "/v2/models/other")[0] == 404

        seen: list[list[float]] = [[], []]  # each client's answers, in its order

        def client(mine: list[float]):
            while not stop.is_set():
                try:
                    value = _infer(url, [[5.0]])[0]
                    mine.append(value)
                    results.append(value)
                except Exception as exc:  # any failed request fails the test
                    failures.append(repr(exc))

        clients = [threading.Thread(target=client, args=(mine,)) for mine in seen]
        for c in clients:
            c.start()
        wait_for(lambda: len(results) > 20)
        second = register(two)
        tagged = time.monotonic()  # the tag is committed: the change the server follows
        wait_for(lambda: results and results[-1] == pytest.approx(10.0), timeout=15,
                 interval=0.01)
        swap = time.monotonic() - tagged
        assert swap < 2.0, swap  # wake-up, download, sha256 check, load, first answer
        loaded = server.wait_line(f"serving model {second} (reg) version 1")
        assert float(re.search(r"loaded in ([0-9.]+) s", loaded).group(1)) < 2.0, loaded
        n_before = len(results)
        # a model that cannot load: the old one keeps serving and the server says why
        bad = register(broken)
        server.wait_line(f"model {bad} (reg) failed to load", timeout=15)
        wait_for(lambda: len(results) > n_before + 20)
        stop.set()
        for c in clients:
            c.join(timeout=10)
        status, meta = get_json(url)
        assert meta["parameters"]["model_id"] == second
        assert bad in meta["parameters"]["last_error"]
        assert _infer(url, [[1.0]]) == pytest.approx([2.0])
    finally:
        stop.set()
        server.stop()
        task.close()
    assert failures == []
    assert set(round(v, 6) for v in results) <= {5.0, 10.0}
    assert results[0] == pytest.approx(5.0) and results[-1] == pytest.approx(10.0)
    # a client that got an answer of the new model never gets the old one again: the swap is
    # one step, never back (across clients, a request sent just before the swap may finish
    # after another client's first new answer)
    for mine in seen:
        first_new = next(i for i, v in enumerate(mine) if v == pytest.approx(10.0))
        assert all(v == pytest.approx(10.0) for v in mine[first_new:]), mine


def test_serve_requires_a_selector(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "home"))
    proc = Proc("serve", "--project", "p", "--endpoint", "e", "--port", "0")
    try:
        proc.wait_line("exactly one of --tag T or --published", timeout=30)
    finally:
        proc.stop()


def test_follower_serves_the_newest_published_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "home"))
    one, two = _linear(tmp_path, 1.0), _linear(tmp_path, 3.0)
    from clearml_hooks import Model, OutputModel, Task
    from clearml_hooks.models import default_store
    from clearml_hooks.serve import Follower

    task = Task.init(project_name="pub", task_name="train", auto_connect_frameworks=False)
    try:
        ids = []
        for path in (one, two):
            om = OutputModel(task=task, name="reg", framework="ScikitLearn")
            om.update_weights(str(path), async_enable=False)
            ids.append(om.id)
        lines: list[str] = []
        follower = Follower(default_store(), project="pub", name="reg", published=True,
                            echo=lines.append)
        assert follower.refresh() is False and follower.current is None  # none published
        Model(ids[0]).publish()
        assert follower.refresh() is True and follower.current.model_id == ids[0]
        Model(ids[1]).publish()
        assert follower.refresh() is True and follower.current.model_id == ids[1]
        assert follower.current.predict(np.array([[2.0]]))[0] == pytest.approx(6.0)
        assert follower.refresh() is False  # unchanged: nothing reloaded
        assert len(follower.swaps) == 2 and all("serving model" in ln for ln in lines)
        # the served model is archived: the newest other match is served again
        Model(ids[1]).archive()
        assert follower.refresh() is True and follower.current.model_id == ids[0]
        # nothing matches any more: the last model keeps serving, and the server says so once
        Model(ids[0]).archive()
        assert follower.refresh() is False and follower.refresh() is False
        assert follower.current.model_id == ids[0]
        assert [ln for ln in lines if "no model matches" in ln] == [
            f"clearml-hooks serve: no model matches {follower.describe()} any more; still "
            f"serving model {ids[0]} version 1"]
    finally:
        task.close()
