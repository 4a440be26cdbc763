"""Framework bindings shipped with clearml-hooks: one module per framework.

Each is declared in the ``clearml_hooks.bindings`` entry-point group (pyproject.toml), the same
group a third party uses to add a framework: that group is the one list of frameworks. A binding
never imports another; what several share lives in ``clearml_hooks.hooks``.
"""
