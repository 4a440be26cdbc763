"""Which processes capture: rank 0 only, never forked children or DataLoader workers (by default)."""

from __future__ import annotations

import os
import sys

from clearml_hooks import config

_forked = False
_dist_before_fork = False


def _after_fork_in_child() -> None:
    global _forked, _dist_before_fork
    # multiprocessing's fork server (named by clearml-hooks' boot sitecustomize) forks
    # fresh workers, as spawn would start them: not copies of a training process
    _forked = os.environ.get("CLEARML_HOOKS_FORKSERVER_PID") != str(os.getppid())
    # a fork of a process that already joined a process group is a worker copy of it; a forked
    # child that joins one itself afterwards is a DDP rank (Lightning's ddp_fork)
    _dist_before_fork = _dist_initialized()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _setting(name: str) -> bool:
    return bool(config.get_or_default(name))


_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")
# os.environ.get raises and catches a KeyError for every unset name (about 1 us each, five
# names, on every captured call): the environment's own dict, read with .get, is what it wraps
_environ_data = getattr(os.environ, "_data", None)
_RANK_KEYS = (tuple(os.environ.encodekey(n) for n in _RANK_VARIABLES)
              if _environ_data is not None else ())


def env_rank() -> int:
    """The distributed rank from the launcher's environment (torchrun, Lightning, MPI, SLURM)."""
    if _environ_data is not None:
        values = [os.environ.decodevalue(v) for k in _RANK_KEYS
                  if (v := _environ_data.get(k)) is not None]
    else:  # pragma: no cover - an os.environ without its dict (not CPython)
        values = [v for n in _RANK_VARIABLES if (v := os.environ.get(n)) is not None]
    for value in values:
        if value and value.strip().lstrip("-").isdigit():
            rank = int(value)
            if rank != 0:
                return rank
    return 0


def in_dataloader_worker() -> bool:
    worker = sys.modules.get("torch.utils.data._utils.worker")
    return worker is not None and getattr(worker, "_worker_info", None) is not None


def _dist_initialized() -> bool:
    dist = sys.modules.get("torch.distributed")
    try:
        return bool(dist is not None and dist.is_available() and dist.is_initialized())
    except Exception:
        return False


def torch_distributed_rank() -> int | None:
    """This process's rank in torch.distributed, or None when it joined no process group."""
    if not _dist_initialized():
        return None
    try:
        return int(sys.modules["torch.distributed"].get_rank())
    except Exception:
        return None


def capture_allowed() -> bool:
    """Cheap check, done on every hooked call: is this process one that captures?"""
    if in_dataloader_worker():
        return _setting("capture_in_workers")
    rank = None if _dist_before_fork else torch_distributed_rank()
    if rank is not None:  # a process group was joined here: its rank decides, forked or not
        return rank == 0 or _setting("capture_all_ranks")
    if _forked and not _setting("capture_in_workers"):
        return False
    if env_rank() != 0:
        return _setting("capture_all_ranks")
    return True
