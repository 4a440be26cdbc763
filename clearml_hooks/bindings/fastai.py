"""fastai: ``Learner.save`` / ``Learner.load``, ``Learner.export`` / ``load_learner``.

fastai attaches ``save``/``load``/``export`` to ``Learner`` with fastcore's ``@patch``, so they
live in ``Learner.__dict__`` (module ``fastai.learner``) and are hooked there. Each one saves or
loads through ``torch.save``/``torch.load``; hooking the outer fastai call makes the registry's
recursion guard keep the inner torch call from being captured a second time as PyTorch.

``Learner.save("name")`` writes ``learn.path/learn.model_dir/name.pth``: the path used for the
filter (and to protect the old bytes before the overwrite) is that computed file, not ``name``.

``load_learner``, ``save_model`` and ``load_model`` are plain functions that fastai re-exports
through ``from ..learner import *`` chains (``fastai.basics``, ``fastai.tabular.all``, ...): those
modules are listed as aliases, so a module imported before ``Task.init`` is patched too.
A name the user's own script star-imported before ``Task.init`` cannot be reached (for those the
PyTorch binding still sees the inner ``torch.load``).
"""

from __future__ import annotations

import os

from clearml_hooks.hooks.binding import Binding, Call, Location, Target, arg

# Modules that re-export fastai.learner's public functions via star imports (fastai 2.7 - 2.8).
_REEXPORTERS = (
    "fastai.basics", "fastai.callback.azureml", "fastai.callback.captum",
    "fastai.callback.channelslast", "fastai.callback.comet", "fastai.callback.data",
    "fastai.callback.fp16", "fastai.callback.hook", "fastai.callback.mixup",
    "fastai.callback.preds", "fastai.callback.progress", "fastai.callback.rnn",
    "fastai.callback.schedule", "fastai.callback.tensorboard", "fastai.callback.tracker",
    "fastai.callback.training", "fastai.callback.wandb", "fastai.collab", "fastai.distributed",
    "fastai.interpret", "fastai.medical.imaging", "fastai.medical.text", "fastai.metrics",
    "fastai.tabular.all", "fastai.tabular.learner", "fastai.text.all", "fastai.text.learner",
    "fastai.vision.all", "fastai.vision.gan", "fastai.vision.learner",
)


def _aliases(name: str) -> tuple[str, ...]:
    return tuple(f"{module}:{name}" for module in _REEXPORTERS)


def _model_file(call: Call):
    """``Learner.save/load``'s file, as fastai's ``join_path_file`` computes it (without its mkdir)."""
    file = call.kwargs["file"] if "file" in call.kwargs else (call.args[0] if call.args else None)
    if not isinstance(file, (str, os.PathLike)):
        return file  # a file object (or None): fastai uses it as is
    learn = call.instance  # os.path.join, not Path: this runs on every call, filtered or not
    return os.path.join(os.fspath(learn.path), os.fspath(learn.model_dir), f"{file}.pth")


def _export_file(call: Call):
    fname = call.kwargs.get("fname", call.args[0] if call.args else "export.pkl")
    if not isinstance(fname, (str, os.PathLike)):
        return None  # fastai itself only takes a name relative to ``learn.path``
    return os.path.join(os.fspath(call.instance.path), os.fspath(fname))


def _iteration(learn) -> int | None:
    """The number of training batches run so far (fastai's ``train_iter``), if any."""
    it = getattr(learn, "train_iter", None)
    return it if isinstance(it, int) else None


def _written(call: Call, pre_path: str) -> Location | None:
    """The file a Learner wrote (``save`` returns it); nothing when fastai skipped the write
    (a non-zero rank returns early)."""
    res = call.result
    path = os.fspath(res) if isinstance(res, (str, os.PathLike)) else pre_path
    if not os.path.isfile(path):
        return None
    return Location(path, iteration=_iteration(call.instance))


def _existing(call: Call, pre_path: str) -> Location | None:
    return Location(pre_path) if os.path.isfile(pre_path) else None


class FastAIBinding(Binding):
    key = "fastai"
    framework = "FastAI"
    object_modules = {"fastai": "FastAI"}
    distribution = "fastai"
    requirement = "fastai>=2.7"
    # fastai models are torch files: a ``pytorch`` wildcard applies when ``fastai`` is not named
    filter_keys = ("fastai", "pytorch")
    targets = (
        Target("fastai.learner", "Learner.save", "save", _model_file, locate=_written),
        Target("fastai.learner", "Learner.load", "load", _model_file),
        Target("fastai.learner", "Learner.export", "save", _export_file, locate=_written),
        Target("fastai.learner", "load_learner", "load", arg("fname", 0),
               aliases=_aliases("load_learner")),
        Target("fastai.learner", "save_model", "save", arg("file", 0), locate=_existing,
               aliases=_aliases("save_model")),
        Target("fastai.learner", "load_model", "load", arg("file", 0),
               aliases=_aliases("load_model")),
    )
