"""The web model table: ``clearml-hooks ui`` (read-only HTML pages and a JSON API).

Standard library only; importing it imports no ML framework.
"""

from __future__ import annotations

from clearml_hooks.ui.server import DEFAULT_HOST, DEFAULT_PORT, ModelTableServer, make_server

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ModelTableServer", "make_server"]
