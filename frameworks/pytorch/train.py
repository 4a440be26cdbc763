"""A small, real PyTorch training script: existing training code plus one Task.init line.

Trains a 2-layer MLP on synthetic regression data, checkpoints every epoch, saves the final
model (state_dict and TorchScript), then reloads the final weights as an evaluation step would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from clearml_hooks import Task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/pytorch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--project", default="examples")
    args = parser.parse_args()

    task = Task.init(project_name=args.project, task_name="pytorch-mlp",
                     auto_connect_frameworks={"pytorch": ["*.pt", "*.pth", "*.ts"]})

    torch.manual_seed(0)
    out = Path(args.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    x = torch.randn(2048, 16)
    y = x @ torch.randn(16, 1) + 0.1 * torch.randn(2048, 1)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(args.epochs):
        for batch in range(0, len(x), 128):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x[batch:batch + 128]), y[batch:batch + 128])
            loss.backward()
            optimizer.step()
        task.set_last_iteration(epoch)
        print(f"epoch {epoch} loss {loss.item():.4f}")
        torch.save({"epoch": epoch, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict()}, out / "checkpoints" / "last.pt")
    torch.save(model.state_dict(), out / "final.pt")
    torch.jit.save(torch.jit.script(model), str(out / "final.ts"))

    restored = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    restored.load_state_dict(torch.load(out / "final.pt"))
    print("reloaded final weights; eval loss",
          nn.functional.mse_loss(restored(x), y).item())


if __name__ == "__main__":
    main()
