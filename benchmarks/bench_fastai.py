"""fastai: save stall of a captured ``Learner.save`` and the agent's cost per load call.

Run (in an environment with fastai): python benchmarks/bench_fastai.py [--repeats 7] [--json]

- save stall: median wall time of ``Learner.save`` of a tabular learner with 6.3 M parameters and
  its Adam state (about 75 MB), with the agent capturing vs agent off, interleaved in one process;
  the store finishes each snapshot between saves, as training computes between checkpoints.
- load cost: the agent's own time per ``Learner.load(name)`` call, once captured (no filter; a
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

KEY = "fastai"


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


if __name__ == "__main__":
    harness.main(KEY, setup)
