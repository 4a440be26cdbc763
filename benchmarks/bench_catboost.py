"""CatBoost: save stall of a captured ``save_model`` and the agent's cost per load call.

Run (in an environment with catboost): python benchmarks/bench_catboost.py [--repeats 7] [--json]

- save stall: median wall time of ``save_model`` (.cbm) of a classifier with 400 trees of depth
  8, with the agent capturing vs agent off, interleaved in one process; the store finishes each
  snapshot between saves, as training computes between checkpoints.
- load cost: the agent's own time per ``CatBoostClassifier().load_model(path)`` call, once
  captured (no filter; a repeated load of an unchanged file) and once filtered out by a
  wildcard. Measured by running the installed hook around a no-op in place of CatBoost (a real
  load's jitter hides microseconds); the wall time of real loads is printed beside it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

KEY = "catboost"


def setup(tmp: str) -> dict:
    import catboost
    import numpy as np
    from catboost import CatBoostClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 30))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=20000) > 0).astype(int)
    big = CatBoostClassifier(iterations=400, depth=8, verbose=0, allow_writing_files=False)
    big.fit(X, y)
    small = CatBoostClassifier(iterations=10, depth=3, verbose=0, allow_writing_files=False)
    small.fit(X[:500], y[:500])
    path, small_path = os.path.join(tmp, "model.cbm"), os.path.join(tmp, "small.cbm")
    small.save_model(small_path)
    return {
        "version": f"catboost {catboost.__version__}", "path": path,
        "save": lambda: big.save_model(path), "save_label": "save_model",
        "load": lambda: CatBoostClassifier().load_model(small_path),
        "load_label": "CatBoostClassifier().load_model(path)",
        "hook_call": ("CatBoost.load_model", (small_path,), {}, CatBoostClassifier()),
    }


if __name__ == "__main__":
    harness.main(KEY, setup)
