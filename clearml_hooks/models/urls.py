"""Weights URLs as the catalog keeps them: ``file://`` + an absolute path, or a remote URL whose
scheme something here can read (a blob store's, or http(s) as ClearML registers them).

Checked when a URL is registered, before anything is created, so bad input leaves nothing
behind; the URL itself is not contacted (ClearML does not either): the first read downloads it.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

READ_ONLY_SCHEMES = ("http", "https")  # registered and downloaded, never a store


def normalize_url(url: Any) -> str:
    """``file://`` + absolute path for local files; a remote URL as given, if it can be read."""
    if url is None or (isinstance(url, str) and not url.strip()):
        raise ValueError("a weights URL or path is required")
    url = os.fspath(url)
    if not isinstance(url, str):
        raise ValueError(f"a weights URL or path must be a string, got {type(url).__name__}")
    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    scheme = url.split("://", 1)[0].lower()
    if scheme == "file":
        return "file://" + os.path.abspath(url[len("file://"):])
    from clearml_hooks.store.blobs import supported_schemes

    supported = sorted({*supported_schemes(), *READ_ONLY_SCHEMES})
    if scheme not in supported:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}: weights can be "
                         "registered at a local path or a URL with one of the schemes "
                         + ", ".join(supported))
    if scheme in READ_ONLY_SCHEMES:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - a bad port raises here, not at the first download
        except ValueError as exc:
            raise ValueError(f"malformed URL {url!r}: {exc}") from None
        if not parts.hostname:
            raise ValueError(f"the URL {url!r} names no host: give the server, as in "
                             f"{scheme}://server/path/model.pt")
        if not parts.path.strip("/"):
            raise ValueError(f"the URL {url!r} names no file on {parts.hostname}: give the "
                             "path of the weights file")
    return url
