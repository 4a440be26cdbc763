"""TensorFlow / Keras: what the agent costs the training thread.

- save stall ratio: median wall time of a save with the agent capturing it / with the agent off
  (originals restored), on a ~100 MB Keras model (``model.save('.keras')``) and the same
  weights as a ``tf.train.Checkpoint`` prefix; interleaved repeats, uploads drained between
  repeats (outside the timed region) so that each save is timed alone;
- cost per load call: median wall time of ``model.load_weights`` on a small model with the agent
  capturing it and with the call filtered out by a wildcard, minus the agent-off time.

    python benchmarks/bench_tensorflow.py [--repeats 7] [--loads 200]
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

from clearml_hooks import Task  # noqa: E402
from clearml_hooks.hooks.registry import registry  # noqa: E402
from clearml_hooks.hooks.selection import parse_auto_connect  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loads", type=int, default=200)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-tf-")
    atexit.register(shutil.rmtree, work, True)  # models of 100 MB and the store, after the task
    task = Task.init(project_name="bench", task_name="tensorflow",
                     output_uri=os.path.join(work, "store"))
    task.wait_registered()
    import numpy as np
    import tensorflow as tf

    keras = tf.keras
    capture = parse_auto_connect(True)
    filtered = parse_auto_connect({"keras": "*.no-match", "tensorflow": "*.no-match"})

    def agent(selection) -> None:
        registry().uninstrument()
        if selection is not None:
            registry().instrument(selection, task.capturer)

    big = keras.Sequential([keras.Input((2048,))] + [keras.layers.Dense(2048) for _ in range(6)])
    size_mb = sum(int(np.prod(w.shape)) for w in big.weights) * 4 / 1e6
    ckpt = tf.train.Checkpoint(model=big)
    saves = {
        f"model.save('.keras') {size_mb:.0f} MB": lambda: big.save(os.path.join(work, "big.keras")),
        f"Checkpoint.write {size_mb:.0f} MB": lambda: ckpt.write(os.path.join(work, "ckpt")),
    }
    for label, save in saves.items():
        agent(None)
        save()  # warm up
        s = harness.interleaved({"off": lambda: agent(None), "on": lambda: agent(capture)},
                                lambda: harness.timed(save), args.repeats,  # noqa: B023
                                after=lambda: task.flush(wait_for_uploads=True))
        off, on = s["off"], s["on"]
        print(f"{label}: off {statistics.median(off) * 1e3:.0f} ms, captured "
              f"{statistics.median(on) * 1e3:.0f} ms, stall ratio "
              f"{statistics.median(on) / statistics.median(off):.3f}")

    small = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
    weights = os.path.join(work, "small.weights.h5")
    agent(None)
    small.save_weights(weights)
    load = lambda: small.load_weights(weights)  # noqa: E731
    modes = {"off": None, "captured": capture, "filtered": filtered}
    results = harness.interleaved({mode: functools.partial(agent, selection)
                                   for mode, selection in modes.items()},
                                  lambda: harness.timed(load), args.loads)
    base = statistics.median(results["off"])
    print(f"load_weights (small), median of {args.loads}: off {base * 1e6:.0f} us, captured "
          f"{statistics.median(results['captured']) * 1e6:.0f} us, filtered out "
          f"{statistics.median(results['filtered']) * 1e6:.0f} us (differences are within noise)")

    # the agent's own work per load call, without the load's noise: the very hook Keras calls,
    # wrapping a no-op instead of the real load (path, filter, stat, de-duplication)
    for mode in ("captured", "filtered"):
        agent(modes[mode])
        [hook] = [h for h in registry().hooks["keras"]
                  if h.wrapper is not None and h.target.qualname == "Model.load_weights"]
        hook(harness.noop, small, (weights,), {})  # the first captured load registers the input
        per_call = harness.per_call_us(hook, 20000, harness.noop, small, (weights,), {})
        print(f"agent cost per load call ({mode}): {per_call:.1f} us")
    agent(None)
    task.close()


if __name__ == "__main__":
    main()
