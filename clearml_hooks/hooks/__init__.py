"""The hook registry: bindings, lazy patching and the capture contract."""

from clearml_hooks.hooks.binding import Binding, Call, Location, Target, arg

__all__ = ["Binding", "Call", "Location", "Target", "arg"]
