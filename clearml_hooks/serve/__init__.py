"""``clearml-hooks serve``: serve the newest matching registry model over the Open Inference
Protocol (KServe V2 REST), and follow the registry.

The server picks the newest model (by creation) of a project and name that carries a tag or is
published, loads it, and answers ``GET /v2/health/ready``, ``GET /v2/models/E`` and
``POST /v2/models/E/infer``. A follower thread reads the registry's event log; when another
model becomes the match (published, tagged, a new version stored), it downloads it, checks its
sha256 against the catalog, loads it, and swaps one reference: requests in flight finish on the
old model, no request fails. A model that fails to load is not retried until it changes; the old
one keeps serving and ``GET /v2/models/E`` says why (``parameters.last_error``).

Loading a pickle (scikit-learn / joblib, and pickled XGBoost / LightGBM / CatBoost) runs code
from the file: serve only models from a registry you trust.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clearml_hooks.store import events as ev

if TYPE_CHECKING:
    from clearml_hooks.store import Store

PICKLE_EXTS = (".pkl", ".pickle", ".joblib", ".sav")

_V2_TYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
             "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
             "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
             "BYTES": "object"}


def v2_type(dtype: Any) -> str:
    name = str(dtype)
    for v2, np_name in _V2_TYPES.items():
        if np_name == name:
            return v2
    return "BYTES"


# -- loaders -----------------------------------------------------------------------------------------

def load_predictor(path: str, framework: str | None) -> Callable[[Any], Any]:
    """A ``predict(ndarray) -> ndarray`` for a model file or folder."""
    fw = (framework or "").lower()
    ext = os.path.splitext(path)[1].lower()
    pickled = ext in PICKLE_EXTS
    if fw == "xgboost" and not pickled:
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(path)
        return lambda x: booster.predict(xgboost.DMatrix(x))
    if fw == "lightgbm" and not pickled:
        import lightgbm

        lgb = lightgbm.Booster(model_file=path)
        return lgb.predict
    if fw == "catboost" and not pickled:
        import catboost

        cb = catboost.CatBoost()
        cb.load_model(path)
        return cb.predict
    if fw == "pytorch" or ext in (".pt", ".pth", ".ts", ".torchscript"):
        import torch

        module = torch.jit.load(path, map_location="cpu").eval()

        def torch_predict(x: Any) -> Any:
            with torch.no_grad():
                return module(torch.as_tensor(x)).numpy()

        return torch_predict
    if fw in ("keras", "tensorflow") or ext in (".keras", ".h5", ".hdf5") or os.path.isdir(path):
        return _keras_predictor(path)
    import joblib

    obj = joblib.load(path)
    if not hasattr(obj, "predict"):
        raise ValueError(f"{os.path.basename(path)} holds a {type(obj).__name__}, which has no "
                         "predict()")
    return obj.predict


def _keras_backend() -> None:
    """Keras 3 imports TensorFlow unless ``KERAS_BACKEND`` names another backend: where
    TensorFlow is not installed, use the torch or JAX backend that is (a ``.keras`` file loads
    on any backend). An explicit ``KERAS_BACKEND`` is kept."""
    import importlib.util

    if os.environ.get("KERAS_BACKEND") or "keras" in sys.modules:
        return
    if importlib.util.find_spec("tensorflow") is not None:
        return
    for backend, module in (("torch", "torch"), ("jax", "jax")):
        if importlib.util.find_spec(module) is not None:
            os.environ["KERAS_BACKEND"] = backend
            return


def _keras_predictor(path: str) -> Callable[[Any], Any]:
    """A ``.keras`` / ``.h5`` file or a SavedModel folder. Keras 3 loads no SavedModel
    folder: those go through ``tf.saved_model.load`` and their ``serving_default``
    signature (the first output is the prediction)."""
    _keras_backend()
    saved_model = os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))
    if saved_model:
        try:
            import tf_keras as keras  # legacy Keras 2 loads SavedModel folders itself
        except ImportError:
            keras = None
        if keras is None:
            import tensorflow as tf

            loaded = tf.saved_model.load(path)
            fn = loaded.signatures["serving_default"]
            (arg_name, spec), = fn.structured_input_signature[1].items()

            def saved_model_predict(x: Any) -> Any:
                out = fn(**{arg_name: tf.constant(x, dtype=spec.dtype)})
                return next(iter(out.values())).numpy()

            return saved_model_predict
    else:
        import keras

    km = keras.models.load_model(path, compile=False)
    return lambda x: km.predict(x, verbose=0)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- following the registry ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Loaded:
    model_id: str
    snapshot_id: str | None
    version: int | None
    name: str
    framework: str | None
    predict: Callable[[Any], Any]
    loaded_at: float


class Follower:
    """Keeps ``current`` = the newest matching model, loaded."""

    def __init__(self, store: Store, *, project: str | None, name: str | None,
                 tag: str | None = None, published: bool = False, poll: float = 0.2,
                 echo: Callable[[str], None] | None = None) -> None:
        if not tag and not published:
            raise ValueError("serve needs --tag T or --published")
        self.store = store
        self.project, self.name, self.tag, self.published = project, name, tag, published
        self.poll = poll
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self.swaps: list[dict[str, Any]] = []
        self._failed: set[tuple[str, str | None]] = set()
        self._unmatched = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self._cursor = ev.last_id(store.catalog)

    def describe(self) -> str:
        what = f"tag {self.tag!r}" if self.tag else "published"
        return f"project {self.project!r} name {self.name!r} ({what})"

    def candidate(self) -> dict | None:
        from clearml_hooks.store import model_ops

        rows = model_ops.query(self.store.catalog, project_name=self.project,
                               model_name=self.name, tags=[self.tag] if self.tag else None,
                               only_published=self.published, max_results=20,
                               order_by="-created")
        for row in rows:
            if row["ready"] and (row["latest_snapshot_id"] or row["uri"]):
                return row
        return None

    def _load(self, row: dict) -> Loaded:
        from clearml_hooks.models import Model

        model = Model(row["id"], store=self.store)
        path = model.get_local_copy(raise_on_error=True)
        version = None
        snap_id = row["latest_snapshot_id"]
        if snap_id:
            snap = self.store.catalog.snapshot(snap_id)
            if snap is None or snap["state"] != "ready":
                raise ValueError(f"version {snap_id} is not stored")
            version = snap["version"]
            if snap["kind"] == "file" and os.path.isfile(path):
                want = snap["files"][0]["sha256"]
                got = _sha256(path)
                if got != want:
                    raise ValueError(f"sha256 mismatch: the catalog has {want}, the file {got}")
        predict = load_predictor(path, row["framework"])
        return Loaded(model_id=row["id"], snapshot_id=snap_id, version=version,
                      name=row["name"], framework=row["framework"], predict=predict,
                      loaded_at=time.time())

    def refresh(self) -> bool:
        """Load and swap in the newest match if it changed; True when it swapped."""
        started = time.monotonic()
        row = self.candidate()
        if row is None:
            cur = self.current
            if cur is not None and not self._unmatched:  # untagged, archived, removed...
                self._unmatched = True
                self.echo(f"clearml-hooks serve: no model matches {self.describe()} any more; "
                          f"still serving model {cur.model_id} version {cur.version}")
            return False
        self._unmatched = False
        key = (row["id"], row["latest_snapshot_id"])
        cur = self.current
        if cur is not None and (cur.model_id, cur.snapshot_id) == key:
            return False
        if key in self._failed:
            return False
        try:
            loaded = self._load(row)
        except Exception as exc:
            self._failed.add(key)
            serving = (f"still serving model {cur.model_id} version {cur.version}"
                       if cur else "nothing to serve yet")
            self.last_error = (f"model {row['id']} ({row['name']}) failed to load: "
                               f"{type(exc).__name__}: {exc}")
            self.echo(f"clearml-hooks serve: {self.last_error}; {serving}")
            return False
        self.current = loaded  # the swap: one reference; requests in flight keep the old one
        self.last_error = None
        seconds = time.monotonic() - started
        self.swaps.append({"model_id": loaded.model_id, "version": loaded.version,
                           "seconds": seconds, "at": time.time()})
        self.echo(f"clearml-hooks serve: serving model {loaded.model_id} ({loaded.name}) "
                  f"version {loaded.version} (loaded in {seconds:.3f} s)")
        return True

    def _relevant(self, event: ev.Event) -> bool:
        if event.model_id is None:
            return False
        return self.project is None or self.project in (event.data.get("project"),
                                                        event.data.get("old_project"))

    def run(self) -> None:
        catalog = self.store.catalog
        waiter = ev.Waiter(catalog, poll=self.poll, stop=self._stop)
        try:
            while not self._stop.is_set():
                batch = ev.retrying("read the event log", lambda: ev.read_after(
                    catalog, self._cursor), self._stop) or []
                if batch:
                    self._cursor = batch[-1].id
                    if any(self._relevant(e) for e in batch):
                        try:
                            self.refresh()
                        except Exception as exc:  # the catalog is down: keep serving
                            self.echo(f"clearml-hooks serve: cannot check the registry: {exc}")
                if len(batch) < 500:
                    waiter.wait(1.0, after=self._cursor)
        finally:
            waiter.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="clearml-hooks-serve-follow",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- the app ---------------------------------------------------------------------------------------------

def create_app(follower: Follower, endpoint: str) -> Any:
    import numpy as np
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> JSONResponse:
        ok = follower.current is not None
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(request: Request) -> JSONResponse:
        from clearml_hooks import __version__

        return JSONResponse({"name": "clearml-hooks", "version": __version__,
                             "extensions": []})

    def _check(request: Request) -> JSONResponse | None:
        if request.path_params["name"] != endpoint:
            return error(404, f"no model {request.path_params['name']!r} (this server has "
                              f"{endpoint!r})")
        return None

    async def model_meta(request: Request) -> JSONResponse:
        if (bad := _check(request)) is not None:
            return bad
        cur = follower.current
        return JSONResponse({
            "name": endpoint, "versions": [str(cur.version)] if cur else [],
            "platform": (cur.framework or "unknown").lower() if cur else "",
            "inputs": [], "outputs": [{"name": "predict", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {
                "model_id": cur.model_id if cur else None,
                "model_name": cur.name if cur else None,
                "version": cur.version if cur else None,
                "follows": follower.describe(), "last_error": follower.last_error}})

    async def model_ready(request: Request) -> JSONResponse:
        if (bad := _check(request)) is not None:
            return bad
        ok = follower.current is not None
        return JSONResponse({"name": endpoint, "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request) -> JSONResponse:
        if (bad := _check(request)) is not None:
            return bad
        cur = follower.current  # one read: a swap during this request does not affect it
        if cur is None:
            return error(503, "no model loaded yet")
        try:
            body = await request.json()
            inputs = body["inputs"]
            if not isinstance(inputs, list) or not inputs:
                raise ValueError("inputs must be a non-empty list")
            first = inputs[0]
            dtype = _V2_TYPES.get(str(first.get("datatype", "FP64")).upper())
            if dtype is None:
                raise ValueError(f"unknown datatype {first.get('datatype')!r}")
            x = np.asarray(first["data"], dtype=dtype)
            if first.get("shape"):
                x = x.reshape([int(d) for d in first["shape"]])
        except Exception as exc:
            return error(400, f"bad request: {type(exc).__name__}: {exc}")
        try:
            # in a worker thread: a slow model run on the event loop stalled every other
            # request, /v2/health/live included (a liveness probe would restart the server)
            y = await run_in_threadpool(lambda: np.asarray(cur.predict(x)))
        except Exception as exc:
            return error(400, f"prediction failed: {type(exc).__name__}: {exc}")
        data = y.ravel().tolist() if y.dtype != object else [str(v) for v in y.ravel()]
        out = {"model_name": endpoint, "model_version": str(cur.version),
               "outputs": [{"name": "predict", "shape": list(y.shape),
                            "datatype": v2_type(y.dtype), "data": data}],
               "parameters": {"model_id": cur.model_id}}
        if isinstance(body, dict) and body.get("id") is not None:
            out["id"] = body["id"]
        return JSONResponse(out)

    routes = [
        Route("/v2", server_meta),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", model_meta),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def bind(host: str, port: int) -> Any:
    """A listening socket (port 0: any free port)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def serve(store: Store, *, endpoint: str, project: str | None, name: str | None,
          tag: str | None, published: bool, host: str = "127.0.0.1", port: int = 8000,
          echo: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT / SIGTERM."""
    import uvicorn

    follower = Follower(store, project=project, name=name, tag=tag, published=published,
                        echo=echo)
    follower.refresh()
    if follower.current is None and follower.last_error is None:
        follower.echo(f"clearml-hooks serve: no model matches {follower.describe()} yet; "
                      "waiting for one")
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    follower.start()
    app = create_app(follower, endpoint)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(f"clearml-hooks serve: http://{shown}:{bound}/v2/models/{endpoint} "
          f"(POST .../infer; follows {follower.describe()})", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        follower.stop()
        sock.close()
