"""The web model registry: ``clearml-hooks ui`` (pip install clearml-hooks[ui]).

A Starlette app served by uvicorn (``serve``), Jinja2 templates with autoescaping, plotly.js
from the ``plotly`` package (no CDN). Nothing here is imported by ``import clearml_hooks`` or
``Task.init``; this package needs the ``ui`` extra.
"""

from __future__ import annotations

from clearml_hooks.ui.serve import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV, UiServer, make_server

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_ENV", "UiServer", "make_server"]
