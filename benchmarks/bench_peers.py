"""Peers in the same run: the training-thread stall of one checkpoint save, side by side.

Run: python benchmarks/bench_peers.py [--size-mb 512] [--repeats 5] [--json]

Five ways to save (and keep) a ``size_mb`` PyTorch state_dict:

- ``torch.save``: plain ``torch.save`` (the baseline);
- ``clearml_hooks``: ``Task.init(output_uri=<tmp store>)``, then ``torch.save`` (captured by the
  hook; the stall is the ``torch.save`` wall time);
- ``mlflow``: ``torch.save`` + ``mlflow.log_artifact(path)`` (tracking URI
  ``sqlite:///<tmp>/mlflow.db``, artifact location in tmp);
- ``wandb``: ``torch.save`` + ``wandb.log_artifact(path)`` (``WANDB_MODE=offline``, dirs in tmp);
- ``clearml``: ClearML offline (``Task.set_offline(True)``), ``torch.save`` +
  ``OutputModel(task).update_weights(path)`` (its auto-logged models are dropped offline, so its
  manual path is what can be compared).

Every sample is a fresh interpreter (the peers patch torch differently), run with ``HOME``,
``TMPDIR``, the XDG folders and each peer's cache folders inside one temporary folder, and
timed from inside: after ``import torch`` (first, as training scripts do, so a peer's import
time excludes what it shares with torch), the import of the peer, its init (``Task.init`` /
tracking URI + experiment + ``mlflow.start_run`` / ``wandb.init``), then the state_dict, a tiny
warm-up save, ``os.sync()``, the measured save and the peer's log call, and the run's end
(``Task.close`` / ``mlflow.end_run`` / ``run.finish``). Peers are interleaved: round 1 runs
them in order, round 2 reversed, and so on; the parent removes each sample's folder and calls
``os.sync()`` before the next sample, so none starts with the previous one's dirty pages. One
untimed small sample of each peer runs first (bytecode compiled, packages in the page cache).
Figures are medians over the rounds; the stall ratio is a peer's median stall over the median
stall of plain ``torch.save``. A peer whose packages are not installed is reported as such.
Everything written goes under one ``tempfile.TemporaryDirectory`` that is removed at the end.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# peer -> (label, modules it needs, distribution whose version is shown)
PEERS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "torch.save": ("plain torch.save", ("torch",), "torch"),
    "clearml_hooks": ("clearml_hooks (captured torch.save)", ("torch", "clearml_hooks"),
                      "clearml-hooks"),
    "mlflow": ("MLflow log_artifact", ("torch", "mlflow", "sqlalchemy", "alembic"),
               "mlflow-skinny"),
    "wandb": ("W&B offline log_artifact", ("torch", "wandb"), "wandb"),
    "clearml": ("ClearML offline update_weights", ("torch", "clearml"), "clearml"),
}

CHILD_TIMEOUT = 900  # seconds for one sample, whatever a peer does at its end


def installed(peer: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in PEERS[peer][1])


def version(peer: str) -> str:
    dist = PEERS[peer][2]
    try:
        return importlib.metadata.version(dist) if dist else ""
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.metadata.version(dist.replace("-skinny", ""))
        except importlib.metadata.PackageNotFoundError:
            return "?"


# -- the child: one sample in a fresh interpreter ------------------------------------------------


def child(peer: str, size_mb: int, work: str) -> dict:
    """One sample of ``peer`` with every file under ``work``. Seconds for each phase."""
    # 1. torch first, as training scripts do (ClearML 2.1.12's Task.init before ``import torch``
    # made torch 2.13's import fail here: "partially initialized module 'torch.utils'")
    import torch

    # 2. import and init of the peer
    t0 = time.perf_counter()
    if peer == "clearml_hooks":
        from clearml_hooks import Task

        t1 = time.perf_counter()
        task = Task.init(project_name="bench", task_name="peers",
                         output_uri=os.path.join(work, "store"))
    elif peer == "mlflow":
        import mlflow

        t1 = time.perf_counter()
        mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
        experiment = mlflow.create_experiment(
            "bench", artifact_location=Path(work, "mlartifacts").as_uri())
        run = mlflow.start_run(experiment_id=experiment, run_name="peers")
    elif peer == "wandb":
        import wandb

        t1 = time.perf_counter()
        run = wandb.init(project="bench", name="peers", dir=work, mode="offline")
    elif peer == "clearml":
        from clearml import OutputModel, Task

        t1 = time.perf_counter()
        Task.set_offline(True)
        task = Task.init(project_name="bench", task_name="peers",
                         output_uri=os.path.join(work, "clearml-output"))
    else:
        t1 = time.perf_counter()
    t2 = time.perf_counter()

    # 3. the model, a warm-up save of a tiny file (first-call costs), nothing dirty
    gen = torch.Generator().manual_seed(0)
    state = {f"layer{i}": torch.randn(size_mb * 2**20 // 4 // 8, generator=gen)
             for i in range(8)}
    torch.save({"warm": torch.zeros(4)}, os.path.join(work, "warm.pt"))
    path = os.path.join(work, "model.pt")
    os.sync()

    # 4. the measured checkpoint: save, then the peer's log call
    t3 = time.perf_counter()
    torch.save(state, path)
    t4 = time.perf_counter()
    check = ""
    if peer == "mlflow":
        mlflow.log_artifact(path)
    elif peer == "wandb":
        wandb.log_artifact(path, name="model", type="model")
    elif peer == "clearml":
        model = OutputModel(task=task, framework="PyTorch")
        base = model._get_base_model()
        if not hasattr(base, "locked"):
            # ClearML 2.1.12 checks ``published`` before its offline branch, and the offline
            # placeholder model has no ``locked``: update_weights raises AttributeError offline
            base.locked = False
        check = model.update_weights(path, auto_delete_file=False)
    t5 = time.perf_counter()

    # 5. the end of the run (clearml_hooks: waits for the background store of the snapshot)
    if peer == "clearml_hooks":
        task.close()
        check = json.dumps(task.capture_stats)
    elif peer == "mlflow":
        mlflow.end_run()
        check = run.info.artifact_uri
    elif peer == "wandb":
        run.finish()
    elif peer == "clearml":
        task.close()
    t6 = time.perf_counter()
    return {"import_s": t1 - t0, "init_s": t2 - t1, "save_s": t4 - t3, "log_s": t5 - t4,
            "stall_s": t5 - t3, "close_s": t6 - t5, "file_mb": os.path.getsize(path) / 1e6,
            "check": str(check)}


# -- the parent ----------------------------------------------------------------------------------


def child_env(work: str) -> dict[str, str]:
    """Every folder a peer writes to (config, caches, staging, offline sessions) under ``work``."""
    home = os.path.join(work, "home")
    os.makedirs(home)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.update({
        "HOME": home, "TMPDIR": work,
        "XDG_CACHE_HOME": os.path.join(home, ".cache"),
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
        "MPLCONFIGDIR": os.path.join(home, "mpl"),
        "CLEARML_HOOKS_HOME": os.path.join(work, "store"),
        "CLEARML_CACHE_DIR": os.path.join(home, "clearml-cache"),
        "CLEARML_CONFIG_FILE": os.path.join(home, "clearml.conf"),
        "CLEARML_OFFLINE_MODE": "1",
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": work,
        "WANDB_CACHE_DIR": os.path.join(home, "wandb-cache"),
        "WANDB_DATA_DIR": os.path.join(home, "wandb-data"),
        "WANDB_CONFIG_DIR": os.path.join(home, "wandb-config"),
        "WANDB_ARTIFACT_DIR": os.path.join(home, "wandb-artifacts"),
        "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
        "GIT_PYTHON_REFRESH": "quiet",
    })
    for key in ("CLEARML_HOOKS_CONFIG", "CLEARML_HOOKS_CATALOG_URL", "CLEARML_HOOKS_BLOB_URL",
                "CLEARML_HOOKS_OFFLINE", "CLEARML_HOOKS_DISABLED", "CLEARML_API_HOST",
                "CLEARML_WEB_HOST", "CLEARML_FILES_HOST", "WANDB_API_KEY"):
        env.pop(key, None)
    return env


def sample(peer: str, size_mb: int, parent_tmp: str) -> dict:
    """Run one sample of ``peer`` in a fresh interpreter; its folder is removed afterwards.
    The child imports a copy of this module from ``parent_tmp/code`` (see :func:`run`)."""
    with tempfile.TemporaryDirectory(prefix=f"{peer}-", dir=parent_tmp) as work:
        code = (f"import json, sys; sys.path.insert(0, {os.path.join(parent_tmp, 'code')!r}); "
                f"import bench_peers; print('@@' + json.dumps(bench_peers.child("
                f"{peer!r}, {size_mb}, {work!r})))")
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 cwd=work, env=child_env(work), timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            result = {"error": f"timed out after {CHILD_TIMEOUT} s"}
        else:
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("@@")]
            if out.returncode or not line:
                tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
                result = {"error": f"exit {out.returncode}: " + " | ".join(tail)}
            else:
                result = json.loads(line[-1][2:])
    os.sync()  # the next sample starts without this one's dirty pages
    return result


def run(size_mb: int, repeats: int, peers: list[str]) -> dict:
    available = [p for p in peers if installed(p)]
    samples: dict[str, list[dict]] = {p: [] for p in available}
    errors: dict[str, list[str]] = {p: [] for p in available}
    loads = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        # the children run a copy of this file outside any git checkout: ClearML and MLflow
        # inspect the repository of the calling script (git commands on a shared checkout)
        os.makedirs(os.path.join(tmp, "code"))
        shutil.copy(__file__, os.path.join(tmp, "code", "bench_peers.py"))
        # one untimed small sample of each peer first: bytecode compiled, packages in the page
        # cache, as on any second run of a training script
        for peer in available:
            result = sample(peer, 8, tmp)
            if "error" in result:
                print(f"warm-up {peer}: {result['error']}", file=sys.stderr)
        for round_ in range(repeats):
            order = available if round_ % 2 == 0 else available[::-1]
            for peer in order:
                loads.append(os.getloadavg()[0])
                result = sample(peer, size_mb, tmp)
                if "error" in result:
                    errors[peer].append(result["error"])
                    print(f"round {round_ + 1} {peer}: {result['error']}", file=sys.stderr)
                else:
                    samples[peer].append(result)
                    print(f"round {round_ + 1} {peer}: save {result['save_s'] * 1e3:.0f} ms, "
                          f"log {result['log_s'] * 1e3:.0f} ms, import "
                          f"{result['import_s'] * 1e3:.0f} ms, init "
                          f"{result['init_s'] * 1e3:.0f} ms, close "
                          f"{result['close_s'] * 1e3:.0f} ms (load {loads[-1]:.2f})",
                          file=sys.stderr, flush=True)
    results: dict = {"size_mb": size_mb, "repeats": repeats, "python": sys.executable,
                     "load_avg_1m": {"min": min(loads, default=0), "max": max(loads, default=0),
                                     "median": statistics.median(loads) if loads else 0},
                     "peers": {}}
    for peer in peers:
        if peer not in samples:
            results["peers"][peer] = {"status": "not installed"}
            continue
        got = samples[peer]
        entry: dict = {"status": "ok" if got else "failed", "version": version(peer),
                       "samples": len(got), "errors": errors[peer]}
        for key in ("save_s", "log_s", "stall_s", "import_s", "init_s", "close_s"):
            if got:
                entry[key.replace("_s", "_ms")] = statistics.median(r[key] for r in got) * 1e3
                entry[key.replace("_s", "_all_ms")] = [round(r[key] * 1e3, 1) for r in got]
        if got:
            entry["check"] = got[-1]["check"]
            entry["file_mb"] = got[-1]["file_mb"]
        results["peers"][peer] = entry
    base = results["peers"].get("torch.save", {}).get("stall_ms")
    for entry in results["peers"].values():
        if base and "stall_ms" in entry:
            entry["ratio"] = entry["stall_ms"] / base
    return results


def table(results: dict) -> str:
    rows = ["| peer | version | torch.save ms | log call ms | stall ms | stall ratio | "
            "import ms | init ms | end of run ms |",
            "|---|---|---|---|---|---|---|---|---|"]
    for peer, e in results["peers"].items():
        label = PEERS[peer][0]
        if e["status"] != "ok":
            rows.append(f"| {label} | {e['status']} | | | | | | | |")
            continue
        fresh = peer == "torch.save"
        rows.append(
            f"| {label} | {e['version']} | {e['save_ms']:.0f} | {e['log_ms']:.0f} | "
            f"**{e['stall_ms']:.0f}** | **{e.get('ratio', float('nan')):.2f}** | "
            f"{'-' if fresh else format(e['import_ms'], '.0f')} | "
            f"{'-' if fresh else format(e['init_ms'], '.0f')} | "
            f"{'-' if fresh else format(e['close_ms'], '.0f')} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated subset of: " + ", ".join(PEERS))
    parser.add_argument("--json", action="store_true", help="print the full results as JSON")
    args = parser.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; valid: {', '.join(PEERS)}")
    started = time.time()
    results = run(args.size_mb, args.repeats, peers)
    results["wall_s"] = time.time() - started
    if args.json:
        print(json.dumps(results, indent=2))
    load = results["load_avg_1m"]
    print(f"{args.size_mb} MB state_dict, median of {args.repeats} interleaved rounds, "
          f"1-minute load average {load['min']:.2f}-{load['max']:.2f} "
          f"(median {load['median']:.2f}), {results['wall_s']:.0f} s in all")
    print(table(results))


if __name__ == "__main__":
    main()
