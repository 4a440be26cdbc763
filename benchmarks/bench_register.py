"""Registering models through ``OutputModel.update_weights`` of small files: throughput.

Run: python benchmarks/bench_register.py [--models 10000] [--size 4096] [--json]

Each model is a new ``OutputModel`` (one registry row, linked to the task) and one
``update_weights`` of its own small file (distinct bytes, so nothing is deduplicated). Three
figures, all on the embedded store (SQLite WAL + local blobs):

- async: the calls return once the snapshot is journaled; then ``wait_for_uploads`` until every
  file is hashed and stored. Reported: calls/s, and models/s end to end.
- sync: ``async_enable=False``, each call returns with the weights stored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(n: int, size: int, async_enable: bool, tmp: str) -> dict:
    from clearml_hooks import OutputModel, Task

    files = os.path.join(tmp, "files")
    os.makedirs(files, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(files, f"model-{i}.pt")
        with open(path, "wb") as f:
            f.write(i.to_bytes(8, "little") * (size // 8))
        paths.append(path)
    task = Task.init(project_name="bench", task_name=f"register-{'async' if async_enable else 'sync'}",
                     output_uri=os.path.join(tmp, "store"))
    task.wait_registered()
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        OutputModel(task=task, name=f"model-{i}").update_weights(path, async_enable=async_enable)
    t_calls = time.perf_counter() - t0
    assert OutputModel.wait_for_uploads(timeout=3600)
    t_all = time.perf_counter() - t0
    stored = sum(1 for m in task.models["output"] if m.ready)
    task.close()
    return {"models": n, "file_bytes": size, "async_enable": async_enable,
            "calls_s": round(t_calls, 2), "calls_per_s": round(n / t_calls, 1),
            "stored_s": round(t_all, 2), "stored_per_s": round(n / t_all, 1),
            "ms_per_model": round(t_all / n * 1e3, 3), "stored": stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("CLEARML_HOOKS_EXIT_TIMEOUT", "600")
    results = []
    for async_enable in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(args.models, args.size, async_enable, tmp))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "load_avg_1min": load, "results": results},
                         indent=2))
        return
    print(f"{args.models} models of {args.size} bytes, {os.cpu_count()} CPUs, load average {load}")
    for r in results:
        mode = "async" if r["async_enable"] else "sync "
        print(f"  {mode}: calls {r['calls_s']:>7.2f} s ({r['calls_per_s']:>7.1f}/s), all stored "
              f"{r['stored_s']:>7.2f} s ({r['stored_per_s']:>7.1f} models/s, "
              f"{r['ms_per_model']} ms each), {r['stored']} stored")


if __name__ == "__main__":
    main()
