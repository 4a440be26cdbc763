from __future__ import annotations

from clearml_hooks.hooks.binding import Binding, Target, arg


def _explode(call):
    raise RuntimeError("binding bug")


class FakeBinding(Binding):
    key = "fakefw"
    framework = "Custom"
    distribution = "no-such-distribution"
    requirement = ""
    targets = (
        Target("tests.helpers.fakefw", "write", "save", arg("path", 1),
               aliases=("tests.helpers.fakefw:public_write",)),
        Target("tests.helpers.fakefw", "outer_write", "save", arg("path", 1)),
    )


class BrokenBinding(Binding):
    key = "brokenfw"
    framework = "Custom"
    distribution = "no-such-distribution"
    targets = (Target("tests.helpers.brokenfw", "write", "save", _explode),)
