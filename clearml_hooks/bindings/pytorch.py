"""PyTorch: ``torch.save`` / ``torch.load`` and TorchScript's ``torch.jit.save`` / ``load`` and
``ScriptModule.save``."""

from __future__ import annotations

from clearml_hooks.hooks.binding import Binding, Target, arg


class PyTorchBinding(Binding):
    key = "pytorch"
    framework = "PyTorch"
    object_modules = {"torch": "PyTorch"}
    distribution = "torch"
    requirement = "torch>=1.10"
    targets = (
        Target("torch.serialization", "save", "save", arg("f", 1), aliases=("torch:save",)),
        Target("torch.serialization", "load", "load", arg("f", 0), aliases=("torch:load",)),
        Target("torch.jit._serialization", "save", "save", arg("f", 1), aliases=("torch.jit:save",)),
        Target("torch.jit._serialization", "load", "load", arg("f", 0), aliases=("torch.jit:load",)),
        # ``torch.jit.script(model).save(path)``; ScriptModule.save is the same function
        Target("torch.jit._script", "RecursiveScriptModule.save", "save", arg("f", 0),
               aliases=("torch.jit._script:ScriptModule.save",)),
    )
