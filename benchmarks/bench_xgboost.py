"""XGBoost: save stall of a captured ``Booster.save_model`` and the agent's cost per load call.

Run (in an environment with xgboost): python benchmarks/bench_xgboost.py [--repeats 7] [--json]

- save stall: median wall time of ``save_model`` of a ~3.5 MB JSON booster (300 rounds, depth
  8) with the agent capturing vs agent off, interleaved in one process; the store finishes each
  snapshot between saves, as training computes between checkpoints.
- load cost: the agent's own time per ``xgb.Booster(model_file=...)`` call, once captured (no
  filter; a repeated load of an unchanged file) and once filtered out by a wildcard. Measured by
  running the installed hook around a no-op in place of XGBoost (a real load takes milliseconds
  and its jitter hides microseconds); the wall time of real loads, agent on vs off, is printed
  beside it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

KEY = "xgboost"


def setup(tmp: str) -> dict:
    import numpy as np
    import xgboost as xgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 30))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=20000) > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": 8, "tree_method": "hist"}
    big = xgb.train(params, xgb.DMatrix(X, label=y), 300)
    small = xgb.train({"objective": "binary:logistic", "max_depth": 3},
                      xgb.DMatrix(X[:500], label=y[:500]), 10)
    path, small_path = os.path.join(tmp, "model.json"), os.path.join(tmp, "small.json")
    small.save_model(small_path)
    return {
        "version": f"xgboost {xgb.__version__}", "path": path,
        "save": lambda: big.save_model(path), "save_label": "Booster.save_model",
        "load": lambda: xgb.Booster(model_file=small_path),
        "load_label": "xgb.Booster(model_file=...)",
        "hook_call": ("Booster.__init__", (), {"model_file": small_path}, None),
    }


if __name__ == "__main__":
    harness.main(KEY, setup)
