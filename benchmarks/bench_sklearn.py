"""scikit-learn / joblib: save stall of a captured ``joblib.dump`` and the agent's cost per load.

Run (in an environment with scikit-learn): python benchmarks/bench_sklearn.py [--repeats 7] [--json]

- save stall: median wall time of ``joblib.dump`` of a random forest (60 trees, ~25 MB) with the
  agent capturing vs agent off, interleaved in one process; the store finishes each snapshot
  between saves, as training computes between checkpoints.
- load cost: the agent's own time per ``joblib.load(path)`` call (including the look at the
  caller's frame that tells joblib.Memory's own loads apart), once captured (no filter; a
  repeated load of an unchanged file) and once filtered out by a wildcard. Measured by running
  the installed hook around a no-op in place of joblib (a real load's jitter hides
  microseconds); the wall time of real loads is printed beside it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

KEY = "joblib"


def setup(tmp: str) -> dict:
    import joblib
    import numpy as np
    import sklearn
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 30))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=20000) > 0).astype(int)
    big = RandomForestClassifier(n_estimators=60, n_jobs=2, random_state=0).fit(X, y)
    small = LogisticRegression().fit(X[:500], y[:500])
    path, small_path = os.path.join(tmp, "model.joblib"), os.path.join(tmp, "small.joblib")
    joblib.dump(small, small_path)
    return {
        "version": f"scikit-learn {sklearn.__version__} / joblib {joblib.__version__}",
        "path": path, "save": lambda: joblib.dump(big, path), "save_label": "joblib.dump",
        "load": lambda: joblib.load(small_path), "load_label": "joblib.load(path)",
        "hook_call": ("load", (small_path,), {}, None),
    }


if __name__ == "__main__":
    harness.main(KEY, setup)
