"""Registry events (issue 10): publish-to-exec latency, serve swap time and requests per second.

- publish -> exec: a real ``clearml-hooks watch --on publish --exec 'date +%s.%N >> FILE'``
  process; the benchmark publishes a model every ~0.15 s and measures from just before the
  publish call to the time the command wrote. SQLite (the watcher polls every 0.2 s) and
  PostgreSQL (LISTEN/NOTIFY; a throwaway server from tests/servers.py).
- swap: a real ``clearml-hooks serve`` process; from registering and tagging a new scikit-learn
  model to the first inference answered by it, with a client loop running.
- requests per second: single-row inference on a small scikit-learn model (keep-alive
  connections, N client threads in this process).

    python benchmarks/bench_events.py [--n 40] [--skip-pg] [--skip-serve] [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.eventutil import Proc, wait_for  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def exec_latency(env: dict, n: int, tmp: Path, label: str) -> dict:
    from clearml_hooks.store import model_ops
    from clearml_hooks.store.catalog import SqlCatalog

    os.environ.update(env)
    from clearml_hooks.config import Settings

    catalog = SqlCatalog(Settings.resolve().catalog_url)
    out = tmp / f"exec-{label}.txt"
    watcher = Proc("watch", "--on", "publish", "--exec", f"date +%s.%N >> {out}", env=env)
    latencies = []
    try:
        watcher.wait_line("clearml-hooks watch", timeout=120)
        ids = [model_ops.create_model(catalog, name=f"m{i}", project="bench") for i in range(n)]
        for i, model_id in enumerate(ids):
            t0 = time.time()
            model_ops.publish(catalog, model_id)
            wait_for(lambda i=i: out.exists() and len(out.read_text().split()) > i, timeout=30,
                     interval=0.005)
            latencies.append(float(out.read_text().split()[i]) - t0)
            time.sleep(0.15 + (i % 5) * 0.03)  # publishes land at different poll phases
    finally:
        watcher.stop()
        catalog.close()
    return {"p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * pct(latencies, 0.95),
            "max_ms": 1000 * max(latencies), "n": n}


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> dict:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    return json.loads(data)


def serve_figures(tmp: Path, seconds: float, clients: int) -> dict:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    os.environ["CLEARML_HOOKS_HOME"] = str(tmp / "serve-home")
    os.environ.pop("CLEARML_HOOKS_CATALOG_URL", None)
    paths = []
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    for k in range(4):
        y = (x[:, k] > 0).astype(int)
        path = tmp / f"clf{k}.joblib"
        joblib.dump(LogisticRegression().fit(x, y), path)
        paths.append(path)
    from clearml_hooks import Model, OutputModel, Task

    task = Task.init(project_name="bench", task_name="serve", auto_connect_frameworks=False)

    def register(path: Path) -> str:
        om = OutputModel(task=task, name="clf", framework="ScikitLearn")
        om.update_weights(str(path), async_enable=False)
        Model(om.id).tags = ["prod"]
        return om.id

    register(paths[0])
    server = Proc("serve", "--project", "bench", "--name", "clf", "--tag", "prod",
                  "--endpoint", "clf", "--port", "0")
    stop = threading.Event()
    errors: list[str] = []
    counts = [0] * clients
    try:
        line = server.wait_line("clearml-hooks serve: http://", timeout=180)
        m = re.search(r"http://([\d.]+):(\d+)(/v2/models/clf)", line)
        host, port, path = m.group(1), int(m.group(2)), m.group(3) + "/infer"
        row = x[:1].ravel().tolist()
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP64",
                                       "data": row}]}).encode()
        model_ids: list[str] = []

        def client(k: int) -> None:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            while not stop.is_set():
                try:
                    out = _post(conn, path, body)
                    counts[k] += 1
                    if k == 0:
                        model_ids.append(out["parameters"]["model_id"])
                except Exception as exc:
                    errors.append(repr(exc))
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # warm up
        before = sum(counts)
        t0 = time.monotonic()
        time.sleep(seconds)
        rps = (sum(counts) - before) / (time.monotonic() - t0)
        swaps = []
        for p in paths[1:]:
            t0 = time.monotonic()
            new_id = register(p)
            wait_for(lambda new_id=new_id: model_ids and model_ids[-1] == new_id, timeout=30,
                     interval=0.002)
            swaps.append(time.monotonic() - t0)
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        stop.set()
        server.stop()
        task.close()
    return {"rps": rps, "clients": clients, "swap_s": swaps, "failed_requests": len(errors),
            "server_log": [ln for ln in server.lines if "loaded in" in ln]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    results: dict = {"load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["HOME"] = str(tmp / "home")
        results["sqlite"] = exec_latency({"CLEARML_HOOKS_HOME": str(tmp / "sq")}, args.n, tmp,
                                         "sqlite")
        print("publish -> exec, SQLite:", json.dumps(results["sqlite"]), flush=True)
        if not args.skip_pg:
            import uuid

            import psycopg

            from tests.servers import start_postgres

            pg = start_postgres(tmp / "pg")
            try:
                name = "b" + uuid.uuid4().hex[:10]
                with psycopg.connect(pg.dsn, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                url = pg.url.rsplit("/", 1)[0] + "/" + name
                results["postgresql"] = exec_latency(
                    {"CLEARML_HOOKS_HOME": str(tmp / "pgh"), "CLEARML_HOOKS_CATALOG_URL": url},
                    args.n, tmp, "pg")
                print("publish -> exec, PostgreSQL:", json.dumps(results["postgresql"]),
                      flush=True)
            finally:
                os.environ.pop("CLEARML_HOOKS_CATALOG_URL", None)
                pg.stop()
        if not args.skip_serve:
            results["serve"] = serve_figures(tmp, args.seconds, args.clients)
            print("serve:", json.dumps(results["serve"]), flush=True)
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
