"""LightGBM: save stall of a captured ``Booster.save_model`` and the agent's cost per load call.

Run (in an environment with lightgbm): python benchmarks/bench_lightgbm.py [--repeats 7] [--json]

- save stall: median wall time of ``save_model`` of a ~5 MB text model (200 rounds, 255
  leaves) with the agent capturing vs agent off, interleaved in one process; the store finishes
  each snapshot between saves, as training computes between checkpoints.
- load cost: the agent's own time per ``lgb.Booster(model_file=...)`` call, once captured (no
  filter; a repeated load of an unchanged file) and once filtered out by a wildcard. Measured by
  running the installed hook around a no-op in place of LightGBM (a real load's jitter hides
  microseconds); the wall time of real loads, agent on vs off, is printed beside it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

KEY = "lightgbm"


def setup(tmp: str) -> dict:
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 30))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=20000) > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 255, "min_data_in_leaf": 5, "verbose": -1}
    big = lgb.train(params, lgb.Dataset(X, label=y), 200)
    small = lgb.train({"objective": "binary", "num_leaves": 7, "verbose": -1},
                      lgb.Dataset(X[:500], label=y[:500]), 10)
    path, small_path = os.path.join(tmp, "model.txt"), os.path.join(tmp, "small.txt")
    small.save_model(small_path)
    return {
        "version": f"lightgbm {lgb.__version__}", "path": path,
        "save": lambda: big.save_model(path), "save_label": "Booster.save_model",
        "load": lambda: lgb.Booster(model_file=small_path),
        "load_label": "lgb.Booster(model_file=...)",
        "hook_call": ("Booster.__init__", (), {"model_file": small_path}, None),
    }


if __name__ == "__main__":
    harness.main(KEY, setup)
