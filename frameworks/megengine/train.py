"""A MegEngine training script: existing code plus the one ``Task.init`` line.

Trains a small regression MLP on synthetic data with GradManager + SGD, checkpoints model and
optimizer state every epoch with ``megengine.save`` (one path, so one model with a snapshot per
epoch), saves the final weights, loads them back for evaluation (an input model) and dumps the
traced inference graph for deployment (``trace.dump``). ``scratch.npy`` is filtered out.

    python frameworks/megengine/train.py [output_dir]
"""

from __future__ import annotations

import os
import sys

import megengine
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
import numpy as np
from megengine.autodiff import GradManager
from megengine.jit import trace

from clearml_hooks import Task

EPOCHS = 3
BATCH = 64


class Net(M.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = M.Linear(16, 64)
        self.fc2 = M.Linear(64, 1)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def main(out_dir: str) -> None:
    task = Task.init(project_name="frameworks", task_name="megengine-train",
                     auto_connect_frameworks={"megengine": ["*.pkl", "*.mge"],
                                              "pytorch": False})
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1024, 16)).astype("float32")
    y = (X @ rng.normal(size=(16, 1))).astype("float32")

    net = Net()
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    gm = GradManager().attach(net.parameters())
    for epoch in range(1, EPOCHS + 1):
        task.set_last_iteration(epoch)
        for i in range(0, len(X), BATCH):
            xb, yb = megengine.tensor(X[i:i + BATCH]), megengine.tensor(y[i:i + BATCH])
            with gm:
                loss = F.nn.square_loss(net(xb), yb)
                gm.backward(loss)
            opt.step().clear_grad()
        print(f"epoch {epoch} loss {float(loss.numpy()):.4f}")
        megengine.save({"epoch": epoch, "model": net.state_dict(), "opt": opt.state_dict()},
                       os.path.join(out_dir, "checkpoint.pkl"))

    megengine.save(X[:8], os.path.join(out_dir, "scratch.npy"))  # not *.pkl / *.mge: filtered
    final = os.path.join(out_dir, "final.pkl")
    megengine.save(net.state_dict(), final)

    restored = Net()
    restored.load_state_dict(megengine.load(final))
    restored.eval()
    pred = restored(megengine.tensor(X)).numpy()
    print(f"eval loss {float(((pred - y) ** 2).mean()):.4f}")

    @trace(symbolic=True, capture_as_const=True)
    def infer(data, *, net):
        return net(data)

    infer(megengine.tensor(X[:1]), net=restored)
    infer.dump(os.path.join(out_dir, "deploy.mge"), arg_names=["data"])
    task.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "megengine-output")
