"""MegEngine: ``megengine.save`` / ``megengine.load`` (defined in ``megengine.serialization``).

Both take a file name or a file object; given a name they open the file and call themselves
again with it, a nested call the registry's recursion guard leaves uncaptured. The hub's loader
(``megengine.hub.hub``) imports ``load`` under another name: it is an alias too, so pretrained
weights loaded through the hub register as input models. ``trace.dump`` writes the traced,
frozen graph that MegEngine deploys (``.mge``): a model save too.
"""

from __future__ import annotations

from clearml_hooks.hooks.binding import Binding, Target, arg


class MegEngineBinding(Binding):
    key = "megengine"
    framework = "MegEngine"
    object_modules = {"megengine": "MegEngine"}
    distribution = "megengine"
    requirement = "megengine>=1.0"
    targets = (
        Target("megengine.serialization", "save", "save", arg("f", 1),
               aliases=("megengine:save",)),
        Target("megengine.serialization", "load", "load", arg("f", 0),
               aliases=("megengine:load", "megengine.hub.hub:_mge_load_serialized")),
        Target("megengine.jit.tracing", "trace.dump", "save", arg("file", 0)),
    )
