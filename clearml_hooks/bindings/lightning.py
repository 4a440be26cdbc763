"""PyTorch Lightning, as ``lightning.pytorch`` and as ``pytorch_lightning``.

Saves: ``Trainer.save_checkpoint`` (``ModelCheckpoint`` saves through it too). Lightning's
``TorchCheckpointIO`` pickles the checkpoint with ``torch.save`` into a ``BytesIO`` and writes the
bytes through fsspec, so the PyTorch binding alone would see an unnamed stream; hooking the outer
call captures the file once, on global rank 0, with ``trainer.global_step`` as its iteration.
With ``AsyncCheckpointIO`` the file is written later in a worker thread: the trainer-level hook
steps aside and the checkpoint IO's ``_atomic_save`` (hooked too; nested under
``save_checkpoint`` it is never captured twice) captures the file once it is written. The same
hook covers ``Fabric.save``.

Loads: ``LightningModule/LightningDataModule.load_from_checkpoint`` are restricted classmethods
whose shape changed across versions; both call the module-level ``core.saving._load_from_checkpoint``,
which is hooked (with the names ``core.module`` and ``core.datamodule`` import it under).
``Trainer.fit/validate/test/predict(ckpt_path=...)`` resolve ``"last"``/``"best"`` to a file and
restore it through the checkpoint connector's ``resume_start``, hooked too (``Trainer.fit`` itself
cannot be: every save during training would then be nested in it).

Lightning checkpoints are torch files: ClearML has no Lightning framework, they are recorded as
``PyTorch``, and a ``pytorch`` wildcard filters them when ``lightning`` is not named.
The tuner's hidden temporary checkpoints (``.lr_find_*.ckpt``, ``.scale_batch_size_*.ckpt``)
and the ``.temp.ckpt`` in which a ``ddp_spawn`` rank 0 hands its weights back to the main
process are not models and are never captured.
"""

from __future__ import annotations

import os

from clearml_hooks.hooks.binding import Binding, Call, Location, Target, arg

_TUNER_TEMP = (".lr_find_", ".scale_batch_size_")
_SPAWN_HANDOVER = ".temp.ckpt"  # ddp_spawn: rank 0's weights for the main process, removed at once


def _user_path(raw):
    """The path, unless it is one of Lightning's own temporary checkpoints."""
    if isinstance(raw, (str, os.PathLike)):
        name = os.path.basename(os.fsdecode(os.fspath(raw)))
        if name.startswith(_TUNER_TEMP) or name == _SPAWN_HANDOVER:
            return None
    return raw


def _async_io(trainer) -> bool:
    io = getattr(getattr(trainer, "strategy", None), "checkpoint_io", None)
    return any(c.__name__ == "AsyncCheckpointIO" for c in type(io).__mro__)


def _trainer_checkpoint(call: Call):
    trainer = call.instance
    if getattr(trainer, "global_rank", 0) != 0:
        return None  # every rank calls save_checkpoint; only rank 0 writes
    if _async_io(trainer):
        return None  # captured by the ``_atomic_save`` hook when the worker thread writes it
    return _user_path(arg("filepath", 0)(call))


def _written(path: str, iteration) -> Location | None:
    """A local file (or a sharded checkpoint's directory); nothing for a remote URL."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    if os.path.isfile(path):
        return Location(path, iteration=iteration)
    if os.path.isdir(path):
        return Location(path, kind="dir", iteration=iteration)
    return None


def _trainer_written(call: Call, pre_path: str) -> Location | None:
    step = getattr(call.instance, "global_step", None)
    return _written(pre_path, step if isinstance(step, int) else None)


def _io_written(call: Call, pre_path: str) -> Location | None:
    checkpoint = call.args[0] if call.args else call.kwargs.get("checkpoint")
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return _written(pre_path, step if isinstance(step, int) else None)


def _atomic_save_path(call: Call):
    return _user_path(arg("filepath", 1)(call))


def _resume_path(call: Call):
    return _user_path(arg("checkpoint_path", 0)(call))


def _targets(pl: str, fabric: str) -> tuple[Target, ...]:
    connector = f"{pl}.trainer.connectors.checkpoint_connector"
    return (
        Target(f"{pl}.trainer.trainer", "Trainer.save_checkpoint", "save", _trainer_checkpoint,
               locate=_trainer_written),
        Target(f"{fabric}.utilities.cloud_io", "_atomic_save", "save", _atomic_save_path,
               locate=_io_written,
               aliases=(f"{fabric}.plugins.io.torch_io:_atomic_save",
                        f"{pl}.plugins.io.hpu_plugin:_atomic_save")),
        Target(f"{pl}.core.saving", "_load_from_checkpoint", "load", arg("checkpoint_path", 1),
               aliases=(f"{pl}.core.module:_load_from_checkpoint",
                        f"{pl}.core.datamodule:_load_from_checkpoint")),
        Target(connector, "_CheckpointConnector.resume_start", "load", _resume_path),  # 2.x
        Target(connector, "CheckpointConnector.resume_start", "load", _resume_path),  # 1.x
    )


class LightningBinding(Binding):
    key = "lightning"
    framework = "PyTorch"
    object_modules = {"lightning": "Lightning", "pytorch_lightning": "Lightning"}
    distribution = ("lightning", "pytorch-lightning")
    requirement = "lightning>=2.0"
    filter_keys = ("lightning", "pytorch")
    targets = (*_targets("lightning.pytorch", "lightning.fabric"),
               *_targets("pytorch_lightning", "lightning_fabric"))
