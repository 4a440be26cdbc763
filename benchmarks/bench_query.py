"""Model.query_models over 100,000 models in the embedded store (SQLite), tag + metadata filters.

Run: python benchmarks/bench_query.py [--models 100000] [--repeats 50] [--json]

Setup bulk-inserts the rows with SQL (models, model_tags, model_metadata); every measured call
is the public ``Model.query_models``. Each model has 2-4 of 50 tags and three metadata keys
(dataset: 10 values, owner: 50 values, epochs: 1..100). Figures are medians over repeats after
one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def populate(store, n: int, seed: int = 7) -> None:
    from clearml_hooks.store import schema as s
    from clearml_hooks.store.catalog import new_id

    rnd = random.Random(seed)
    catalog = store.catalog
    t0 = time.time() - n
    with catalog.write() as conn:
        projects = [catalog.ensure_project(conn, f"project-{i}") for i in range(20)]
    chunk = 10_000
    for start in range(0, n, chunk):
        models, tags, meta = [], [], []
        for i in range(start, min(n, start + chunk)):
            model_id = new_id()
            model_tags = rnd.sample(range(50), rnd.randint(2, 4))
            names = [f"tag-{t}" for t in model_tags]
            models.append({
                "id": model_id, "project_id": projects[i % 20], "task_id": None,
                "name": f"model-{i % 1000}", "origin": "manual", "framework": "PyTorch",
                "uri": f"s3://bucket/models/{model_id}.pt", "comment": "",
                "tags": json.dumps(names), "system_tags": "[]", "labels": "{}",
                "is_package": False, "published": i % 3 == 0, "archived": i % 50 == 0,
                "ready": True, "iteration": i % 100, "created": t0 + i, "updated": t0 + i})
            tags += [{"model_id": model_id, "tag": t} for t in names]
            meta += [
                {"model_id": model_id, "key": "dataset", "value": f"ds-{rnd.randrange(10)}",
                 "type": "str"},
                {"model_id": model_id, "key": "owner", "value": f"user-{rnd.randrange(50)}",
                 "type": "str"},
                {"model_id": model_id, "key": "epochs", "value": str(rnd.randint(1, 100)),
                 "type": "int"}]
        with catalog.write() as conn:
            conn.execute(s.models.insert(), models)
            conn.execute(s.model_tags.insert(), tags)
            conn.execute(s.model_metadata.insert(), meta)


def timed(fn, repeats: int) -> tuple[float, float, int]:
    """(median wall ms, median CPU ms of this process, result size). CPU time shows the cost
    when other processes compete for the cores (wall time then includes waiting for a core)."""
    result = fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        result = fn()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(wall), statistics.median(cpu), len(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from clearml_hooks import Model
    from clearml_hooks.config import Settings
    from clearml_hooks.store import store_for

    with tempfile.TemporaryDirectory() as tmp:
        store = store_for(Settings.resolve(home=tmp))
        t = time.perf_counter()
        populate(store, args.models)
        setup_s = time.perf_counter() - t

        def q(**kw):
            return lambda: Model.query_models(store=store, **kw)

        cases = {
            "tag + metadata (all matches)": q(tags=["tag-7"], metadata={"dataset": "ds-3"}),
            "tag + metadata, max_results=10": q(tags=["tag-7"], metadata={"dataset": "ds-3"},
                                                max_results=10),
            "2 tags AND + 2 metadata keys": q(tags=["__$and", "tag-7", "tag-8"],
                                              metadata={"dataset": "ds-3", "owner": "user-1"}),
            "tag OR + exclusion + metadata": q(tags=["tag-1", "tag-2", "-tag-3"],
                                               metadata={"dataset": "ds-3"}, max_results=100),
            "project + tag + metadata": q(project_name="project-4", tags=["tag-7"],
                                          metadata={"dataset": "ds-3"}),
            "tag only, max_results=50": q(tags=["tag-7"], max_results=50),
            "no filter, max_results=50": q(max_results=50),
        }
        results = {}
        for label, fn in cases.items():
            wall_ms, cpu_ms, count = timed(fn, args.repeats)
            results[label] = {"median_ms": round(wall_ms, 2), "median_cpu_ms": round(cpu_ms, 2),
                              "models_returned": count}
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        out = {"models": args.models, "setup_s": round(setup_s, 1), "repeats": args.repeats,
               "cpus": os.cpu_count(), "load_avg_1min": load, "results": results}
        if args.json:
            print(json.dumps(out, indent=2))
            return
        print(f"{args.models} models (bulk setup {setup_s:.1f} s), median of {args.repeats} calls, "
              f"{os.cpu_count()} CPUs, load average {load}")
        for label, r in results.items():
            print(f"  {label:<36} {r['median_ms']:>8.2f} ms wall {r['median_cpu_ms']:>8.2f} ms CPU"
                  f"  ({r['models_returned']} models)")


if __name__ == "__main__":
    main()
