"""Which processes capture: rank 0 only, never forked children or DataLoader workers (by default)."""

from __future__ import annotations

import os
import sys

_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def env_rank() -> int:
    """The distributed rank from the launcher's environment (torchrun, Lightning, MPI, SLURM)."""
    for name in ("RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        value = os.environ.get(name)
        if value and value.strip().lstrip("-").isdigit():
            rank = int(value)
            if rank != 0:
                return rank
    return 0


def in_dataloader_worker() -> bool:
    worker = sys.modules.get("torch.utils.data._utils.worker")
    return worker is not None and getattr(worker, "_worker_info", None) is not None


def torch_distributed_rank() -> int:
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return 0
    try:
        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except Exception:
        return 0
    return 0


def capture_allowed() -> bool:
    """Cheap check, done on every hooked call: is this process one that captures?"""
    if _forked or in_dataloader_worker():
        if not _truthy(os.environ.get("CLEARML_HOOKS_CAPTURE_IN_WORKERS")):
            return False
    if env_rank() != 0 or torch_distributed_rank() != 0:
        return _truthy(os.environ.get("CLEARML_HOOKS_CAPTURE_ALL_RANKS"))
    return True
