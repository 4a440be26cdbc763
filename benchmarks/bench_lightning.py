"""PyTorch Lightning: save stall of a captured ``Trainer.save_checkpoint`` and the agent's cost per load call.

Run (in an environment with lightning): python benchmarks/bench_lightning.py [--repeats 7] [--json]

- save stall: median wall time of ``Trainer.save_checkpoint`` of a 4.3 M-parameter module with its Adam state (about 52 MB), with the agent capturing vs agent off, interleaved in
  one process; the store finishes each snapshot between saves, as training computes between
  checkpoints.
- load cost: the agent's own time per ``LightningModule.load_from_checkpoint(path)`` call, once captured (no filter; a repeated load
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

KEY = "lightning"


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

    import lightning
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    warnings.simplefilter("ignore")

    class Net(pl.LightningModule):
        def __init__(self, width: int = 2048):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    def fitted(width):
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, default_root_dir=tmp)
        x = torch.randn(32, 64)
        trainer.fit(Net(width), DataLoader(TensorDataset(x, x[:, :1]), batch_size=32))
        return trainer

    big = fitted(2048)  # about 4.3 M parameters: weights + Adam state, ~52 MB checkpoint
    small_path = os.path.join(tmp, "small.ckpt")
    fitted(8).save_checkpoint(small_path)
    path = os.path.join(tmp, "model.ckpt")
    return {
        "version": f"lightning {lightning.__version__}", "path": path,
        "save": lambda: big.save_checkpoint(path), "save_label": "Trainer.save_checkpoint",
        "load": lambda: Net.load_from_checkpoint(small_path),
        "load_label": "LightningModule.load_from_checkpoint(path)",
        "hook_call": ("_load_from_checkpoint", (Net, small_path), {}, None),
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
