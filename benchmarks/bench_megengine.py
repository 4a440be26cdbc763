"""MegEngine: save stall of a captured ``megengine.save`` and the agent's cost per load call.

Run (in an environment with megengine): python benchmarks/bench_megengine.py [--repeats 7] [--json]

- save stall: median wall time of ``megengine.save`` of the state dict of an 8.4 M-parameter MLP
  (about 34 MB), with the agent capturing vs agent off, interleaved in one process; the store
  finishes each snapshot between saves, as training computes between checkpoints.
- load cost: the agent's own time per ``megengine.load(path)`` call, once captured (no filter; a
  repeated load of an unchanged file) and once filtered out by a wildcard. Measured by running the
  installed hook around a no-op in place of the framework (a real load's jitter hides microseconds);
  the wall time of real loads is printed beside it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

KEY = "megengine"


def setup(tmp: str) -> dict:
    import megengine
    import megengine.module as M

    big = M.Sequential(M.Linear(1024, 2048), M.ReLU(), M.Linear(2048, 2048), M.ReLU(),
                       M.Linear(2048, 1024))  # 8.4 M parameters, about 34 MB
    state = big.state_dict()
    path, small_path = os.path.join(tmp, "model.pkl"), os.path.join(tmp, "small.pkl")
    megengine.save(M.Linear(16, 4).state_dict(), small_path)
    return {
        "version": f"megengine {megengine.__version__}", "path": path,
        "save": lambda: megengine.save(state, path), "save_label": "megengine.save(state_dict)",
        "load": lambda: megengine.load(small_path), "load_label": "megengine.load(path)",
        "hook_call": ("load", (small_path,), {}, None),
    }


if __name__ == "__main__":
    harness.main(KEY, setup)
