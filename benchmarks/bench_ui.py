"""Server time of the web UI: the model table over N models (two metadata columns and one metric
column, sorted by the metric) and a model page with 10 series of 10,000 points.

    python benchmarks/bench_ui.py [--models 100000] [--repeat 15] [--postgres]

``--postgres`` runs the same on a throwaway PostgreSQL (tests/servers.py) instead of SQLite.

Measured through a real uvicorn server on 127.0.0.1 (time to the last byte, median of
``--repeat``), plus the table query alone. The store is seeded in bulk (one transaction per
10,000 rows) so seeding 100k models takes seconds, not the minutes the SDK would take.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clearml_hooks.config import Settings  # noqa: E402
from clearml_hooks.store import schema as s  # noqa: E402
from clearml_hooks.store import store_for  # noqa: E402
from clearml_hooks.store.catalog import new_id  # noqa: E402

TABLE_URL = ("?columns=name,project,framework,tags,status,iteration,updated,"
             "metadata.dataset,metadata.lr,metric.loss/val&sort=-metric.loss/val")


def seed(catalog, n: int, *, series_points: int = 10_000, series: int = 10) -> str:
    """n models in 10 projects, each with metadata dataset/lr and loss/val at 5 iterations; the
    first model also gets ``series`` series of ``series_points`` points. Returns its id."""
    rnd = random.Random(1)
    t0 = time.time()
    with catalog.write() as conn:
        project_ids = [catalog.ensure_project(conn, f"project-{i}") for i in range(10)]
        task_id = new_id()
        conn.execute(s.tasks.insert().values(
            id=task_id, project_id=project_ids[0], name="bench", task_type="training",
            status="completed", tags="[]", comment="", labels="{}", host="", created=t0,
            updated=t0))
    first = None
    for start in range(0, n, 10_000):
        models, meta, scalars = [], [], []
        for i in range(start, min(n, start + 10_000)):
            mid = new_id()
            first = first or mid
            models.append({
                "id": mid, "project_id": project_ids[i % 10], "task_id": task_id,
                "name": f"model-{i:06d}", "origin": "manual", "framework": "PyTorch",
                "comment": "", "tags": '["bench"]', "system_tags": "[]", "labels": "{}",
                "is_package": False, "published": i % 7 == 0, "archived": False,
                "ready": True, "iteration": i, "created": t0 + i, "updated": t0 + i})
            meta.append({"model_id": mid, "key": "dataset", "value": f"v{i % 5}", "type": "str"})
            meta.append({"model_id": mid, "key": "lr", "value": str(rnd.random() / 100),
                         "type": "float"})
            for it in range(5):
                scalars.append({"model_id": mid, "title": "loss", "series": "val",
                                "iteration": it, "value": rnd.random(), "created": t0})
        with catalog.write() as conn:
            conn.execute(s.models.insert(), models)
            conn.execute(s.model_metadata.insert(), meta)
            conn.execute(s.model_scalars.insert(), scalars)
    points = [{"model_id": first, "title": "train", "series": f"series-{k}", "iteration": it,
               "value": rnd.random(), "created": t0}
              for k in range(series) for it in range(series_points)]
    with catalog.write() as conn:
        conn.execute(s.model_scalars.insert(), points)
    return first


def timed(url: str, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            assert response.status == 200
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    pg = None
    pg_root = tempfile.mkdtemp()
    try:
        if args.postgres:
            from tests.servers import start_postgres

            pg = start_postgres(Path(pg_root) / "pg")
        run(args, pg.url if pg else None)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


def run(args: argparse.Namespace, catalog_url: str | None) -> None:
    from clearml_hooks.store import model_table
    from clearml_hooks.ui.serve import UiServer

    with tempfile.TemporaryDirectory() as home:
        settings = Settings.resolve(home=home)
        if catalog_url:
            settings.catalog_url = catalog_url
        store = store_for(settings)
        store.wait()
        t = time.perf_counter()
        first = seed(store.catalog, args.models)
        print(f"seeded {args.models} models in {time.perf_counter() - t:.1f} s")
        query = model_table.TableQuery(
            columns=[model_table.parse_column(c) for c in (
                "name", "project", "metadata.dataset", "metadata.lr", "metric.loss/val")],
            sort="-metric.loss/val")
        q_times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            model_table.page(store.catalog, query)
            q_times.append((time.perf_counter() - t) * 1000)
        server = UiServer(store, port=0).start()
        try:
            timed(server.url, 2)  # warm up
            table = timed(server.url + TABLE_URL, args.repeat)
            api = timed(server.url + "api/v1/models" + TABLE_URL, args.repeat)
            model = timed(server.url + f"models/{first}", args.repeat)
            scalars = timed(server.url + f"api/v1/models/{first}/scalars", args.repeat)
        finally:
            server.stop()
        store.catalog.close()
    for name, xs in (("table query (SQL only)", q_times), ("table page /", table),
                     ("table API /api/v1/models", api), ("model page (10 x 10k points)", model),
                     ("scalars API (10 x 10k points)", scalars)):
        print(f"{name:32} median {statistics.median(xs):7.1f} ms   min {min(xs):7.1f} ms")


if __name__ == "__main__":
    main()
