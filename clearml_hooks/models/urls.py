"""Weights URLs as the catalog keeps them: ``file://`` + an absolute path, or a remote URL whose
scheme something here can read."""

from __future__ import annotations

import os
from typing import Any


def normalize_url(url: Any) -> str:
    """``file://`` + absolute path for local files; remote URLs must use a scheme the store has."""
    if url is None or (isinstance(url, str) and not url.strip()):
        raise ValueError("a weights URL or path is required")
    url = os.fspath(url)
    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    scheme = url.split("://", 1)[0].lower()
    if scheme == "file":
        return "file://" + os.path.abspath(url[len("file://"):])
    from clearml_hooks.store.blobs import supported_schemes

    supported = supported_schemes()
    if scheme not in supported:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}; supported: "
                         + ", ".join(supported) + " (or a local path)")
    return url

