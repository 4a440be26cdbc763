"""TensorFlow / Keras: save stall of two captured saves and the agent's cost per load call.

Run (in an environment with tensorflow-cpu, Keras 3):
python benchmarks/bench_tensorflow.py [--repeats 7] [--calls 30] [--json] [--retoggle]

- save stall, twice, on the same ~100 MB of weights (six 2048 x 2048 dense layers): Keras 3
  ``model.save('x.keras')`` (the ``keras`` binding) and ``tf.train.Checkpoint.write(prefix)``
  (the ``tensorflow`` binding). Each: median wall time of the save with the agent capturing vs
  agent off (``harness.agent_switches``: the sink taken away, the hooks stay installed),
  interleaved in one process; the store finishes each snapshot between saves, as training
  computes between checkpoints (``harness.save_stall``).
- load cost: the agent's own time per ``Model.load_weights(path)`` call of a small model, once
  captured (no filter; a repeated load of an unchanged file) and once filtered out by a wildcard.
  Measured by running the installed hook around a no-op in place of Keras (a real load's jitter
  hides microseconds); the wall time of real loads is printed beside it (``harness.load_cost``).

``harness.main`` runs one save per framework; this script runs the same harness functions for
two saves and keeps its flags and output.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

KEY = "keras"


def setup(tmp: str) -> dict:
    import keras
    import tensorflow as tf

    big = keras.Sequential([keras.Input((2048,))] + [keras.layers.Dense(2048) for _ in range(6)])
    ckpt = tf.train.Checkpoint(model=big)
    keras_path, ckpt_prefix = os.path.join(tmp, "big.keras"), os.path.join(tmp, "ckpt")
    small = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
    small_path = os.path.join(tmp, "small.weights.h5")
    small.save_weights(small_path)
    return {
        "version": f"tensorflow-cpu {tf.__version__} / Keras {keras.__version__}",
        "saves": {
            "keras_save": {"label": "model.save('.keras')", "save": lambda: big.save(keras_path),
                           "files": lambda: [keras_path]},
            "checkpoint_write": {"label": "tf.train.Checkpoint.write",
                                 "save": lambda: ckpt.write(ckpt_prefix),
                                 "files": lambda: glob.glob(ckpt_prefix + ".*")},
        },
        "load": lambda: small.load_weights(small_path), "load_label": "Model.load_weights(path)",
        "hook_call": ("Model.load_weights", (small_path,), {}, small),
    }


def main() -> None:
    args = harness.parse_args()

    from clearml_hooks import Task

    tmp = tempfile.mkdtemp(prefix="bench-tf-")
    try:
        fw = setup(tmp)
        results: dict = {"version": fw["version"]}
        task = Task.init(project_name="bench", task_name=f"{KEY}-save",
                         output_uri=os.path.join(tmp, "store"))
        try:
            task.wait_registered()
            for name, s in fw["saves"].items():
                r = harness.save_stall(task, s["save"], args.repeats)
                r["model_mb"] = sum(os.path.getsize(f) for f in s["files"]()) / 1e6
                results[name] = r
                if args.retoggle:
                    results[f"{name}_retoggle"] = harness.retoggle_cost(task, s["save"],
                                                                        args.repeats)
        finally:
            task.close()

        for mode, frameworks in (("captured", True), ("filtered", {KEY: "final*"})):
            results[f"load_{mode}"] = harness.load_cost(KEY, tmp, fw["load"], fw["hook_call"],
                                                        frameworks, args.repeats, args.calls)
    finally:
        from clearml_hooks import Task

        current = Task.current_task()
        if current is not None:  # an error left a task open: stop its worker before the rmtree
            current.close()
        shutil.rmtree(tmp, ignore_errors=True)  # the 100 MB models and the store
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, s in fw["saves"].items():
        r = results[name]
        print(f"{fw['version']}: {s['label']} of {r['model_mb']:.1f} MB: {r['off_ms']:.1f} ms "
              f"off, {r['on_ms']:.1f} ms captured, stall ratio {r['ratio']:.2f}")
        if args.retoggle:
            t = results[f"{name}_retoggle"]
            print(f"captured {s['label']} right after uninstrument + instrument: "
                  f"{t['retoggled_ms']:.1f} ms against {t['on_ms']:.1f} ms "
                  f"({t['added_us']:+.0f} us)")
    for mode in ("captured", "filtered"):
        r = results[f"load_{mode}"]
        print(f"{fw['load_label']} {mode}: agent {r['agent_us']:.1f} us per call "
              f"(real loads: {r['wall_off_us']:.0f} us off, {r['wall_on_us']:.0f} us on)")


if __name__ == "__main__":
    main()
