"""fastai: save stall of a captured ``Learner.save`` and the agent's cost per load call.

Run (in an environment with fastai): python benchmarks/bench_fastai.py [--repeats 7] [--json]

- save stall: median wall time of ``Learner.save`` of a tabular learner with 6.3 M parameters and its Adam state (about 75 MB), with the agent capturing vs agent off, interleaved in
  one process; the store finishes each snapshot between saves, as training computes between
  checkpoints.
- load cost: the agent's own time per ``Learner.load(name)`` call, once captured (no filter; a repeated load
  of an unchanged file) and once filtered out by a wildcard. Measured by running the installed
  hook around a no-op in place of the framework (a real load's jitter hides microseconds); the
  wall time of real loads is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEY = "fastai"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def save_stall(task, save, repeats: int) -> dict:
    from clearml_hooks.hooks.registry import registry

    selection, sink = registry().selection, registry().sink
    save()  # warm the page cache and the store
    task.flush(wait_for_uploads=True)
    on, off = [], []
    for _ in range(repeats):
        registry().uninstrument()
        off.append(timed(save))
        registry().instrument(selection, sink)
        on.append(timed(save))
        task.flush(wait_for_uploads=True)
    return {"off_ms": statistics.median(off) * 1e3, "on_ms": statistics.median(on) * 1e3,
            "ratio": statistics.median(on) / statistics.median(off)}


def hook_cost(qualname: str, args: tuple, kwargs: dict, instance=None, calls: int = 20000) -> float:
    """Microseconds the installed hook adds to one call, around a no-op instead of the framework."""
    from clearml_hooks.hooks.registry import registry

    hook = next(h for h in registry().hooks[KEY] if h.target.qualname == qualname)

    def noop(*a, **k):
        return None

    def loop(fn) -> float:
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t) / calls * 1e6

    hooked = lambda: hook(noop, instance, args, kwargs)  # noqa: E731
    bare = lambda: noop(*args, **kwargs)  # noqa: E731
    hooked()
    return statistics.median(loop(hooked) - loop(bare) for _ in range(5))


def load_cost(tmp: str, load, hook_call, frameworks, repeats: int, calls: int) -> dict:
    from clearml_hooks import Task
    from clearml_hooks.hooks.registry import registry

    task = Task.init(project_name="bench", task_name=f"{KEY}-load-{bool(frameworks is True)}",
                     output_uri=os.path.join(tmp, "store"), auto_connect_frameworks=frameworks)
    task.wait_registered()
    selection, sink = registry().selection, registry().sink
    agent_us = hook_cost(*hook_call)

    def per_call() -> float:
        t = time.perf_counter()
        for _ in range(calls):
            load()
        return (time.perf_counter() - t) / calls * 1e6

    per_call()
    on, off = [], []
    for _ in range(repeats):
        registry().uninstrument()
        off.append(per_call())
        registry().instrument(selection, sink)
        on.append(per_call())
    task.close()
    return {"agent_us": agent_us, "wall_off_us": statistics.median(off),
            "wall_on_us": statistics.median(on)}


def setup(tmp: str) -> dict:
    import warnings

    import fastai
    import fastai.tabular.all as fta
    import numpy as np
    import pandas as pd

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=512), "b": rng.normal(size=512),
                       "c": rng.choice(["x", "y", "z"], 512)})
    df["y"] = (df.a + 2 * df.b).astype("float32")

    def learner(layers):
        dls = fta.TabularDataLoaders.from_df(
            df, path=tmp, y_names="y", cat_names=["c"], cont_names=["a", "b"],
            procs=[fta.Categorify, fta.FillMissing, fta.Normalize], bs=64)
        learn = fta.tabular_learner(dls, layers=layers, n_out=1)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1)  # creates the optimizer state that Learner.save writes too
        return learn

    big = learner([2048, 2048, 1024])  # about 6.3 M parameters: weights + Adam state, ~75 MB
    small = learner([8])
    small.save("small")
    return {
        "version": f"fastai {fastai.__version__}",
        "path": os.path.join(tmp, "models", "model.pth"),
        "save": lambda: big.save("model"), "save_label": "Learner.save (with optimizer state)",
        "load": lambda: small.load("small"), "load_label": "Learner.load(name)",
        "hook_call": ("Learner.load", ("small",), {}, small),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from clearml_hooks import Task

    tmp = tempfile.mkdtemp()
    fw = setup(tmp)
    task = Task.init(project_name="bench", task_name=f"{KEY}-save",
                     output_uri=os.path.join(tmp, "store"))
    task.wait_registered()
    results = {"version": fw["version"], "save": save_stall(task, fw["save"], args.repeats)}
    results["save"]["model_mb"] = os.path.getsize(fw["path"]) / 1e6
    task.close()

    results["load_captured"] = load_cost(tmp, fw["load"], fw["hook_call"], True, args.repeats,
                                         args.calls)
    results["load_filtered"] = load_cost(tmp, fw["load"], fw["hook_call"], {KEY: "final*"},
                                         args.repeats, args.calls)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    s = results["save"]
    print(f"{fw['version']}: {fw['save_label']} of a {s['model_mb']:.1f} MB model: "
          f"{s['off_ms']:.1f} ms off, {s['on_ms']:.1f} ms captured, stall ratio {s['ratio']:.2f}")
    for mode in ("captured", "filtered"):
        r = results[f"load_{mode}"]
        print(f"{fw['load_label']} {mode}: agent {r['agent_us']:.1f} us per call "
              f"(real loads: {r['wall_off_us']:.0f} us off, {r['wall_on_us']:.0f} us on)")


if __name__ == "__main__":
    main()
