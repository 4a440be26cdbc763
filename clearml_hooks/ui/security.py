"""The UI's request checks, as one ASGI middleware: Host (DNS rebinding), access token, Origin
and CSRF on every POST, and the security headers (CSP: only the app's own scripts).

Why each: a loopback server is reachable from any page the user's browser opens, so it answers
only requests addressed to a loopback name and refuses cross-site POSTs (Origin, plus a CSRF
token a foreign page cannot read). Bound to another address it has no such shield, so every
request must carry the token (``Authorization: Bearer``, or ``?token=`` once, which sets a
cookie).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
TOKEN_COOKIE = "clearml_hooks_ui_token"
_LOOPBACK_NAMES = {"localhost", "localhost.", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a Host header (``[::1]:8080`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass
class Guard:
    """The server's security settings; ``csrf_secret`` is per process (forms die on restart)."""

    loopback_only: bool
    token: str | None = None
    read_only: bool = False
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def csrf_token(self) -> str:
        return hmac.new(self.csrf_secret, b"clearml-hooks-ui-csrf", hashlib.sha256).hexdigest()

    def csrf_ok(self, value: str | None) -> bool:
        return bool(value) and _same(value, self.csrf_token())

    def token_ok(self, value: str | None) -> bool:
        return self.token is None or (bool(value) and _same(value, self.token))


def _same(given: str, expected: str) -> bool:
    """Constant-time compare of bytes: ``hmac.compare_digest`` raises TypeError on a str
    that is not ASCII, which made a token like ``?token=%C3%A9`` a 500 instead of a 401."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


Send = Callable[[dict], Awaitable[None]]


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class SecurityMiddleware:
    """Refuses what the Guard forbids before the app sees it; adds headers to every answer."""

    def __init__(self, app: Any, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path = scope.get("path", "")
        refusal = self._check(scope, headers)
        if refusal is not None:
            await _refuse(send, path, *refusal)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if self.guard.token and query.get("token") and scope["method"] == "GET":
            # the token came in the URL once: keep it in a cookie, drop it from the address bar
            rest = urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs])
            # one leading slash: "//host" would be a redirect to another site
            location = "/" + quote(path.lstrip("/"), safe="/") + ("?" + rest if rest else "")
            await _redirect_with_cookie(send, location, self.guard.token)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                         (b"x-frame-options", b"DENY"),
                         (b"content-security-policy", CSP.encode())]
                names = {k.lower() for k, _ in message.get("headers", [])}
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _check(self, scope: dict, headers: dict[str, str]) -> tuple[int, str] | None:
        guard = self.guard
        host = headers.get("host")
        if guard.loopback_only and host is not None and not is_loopback(host_name(host)):
            return 421, ("this server is bound to a loopback address and answers only requests "
                         "for localhost / 127.0.0.1")
        if guard.token is not None:
            given = None
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if given is None and "cookie" in headers:
                morsel = SimpleCookie(headers["cookie"]).get(TOKEN_COOKIE)
                given = morsel.value if morsel else None
            if given is None:
                given = (parse_qs(scope.get("query_string", b"").decode("latin-1"))
                         .get("token") or [None])[0]
            if not guard.token_ok(given):
                return 401, "this server needs its access token (see the line it printed at start)"
        if scope["method"] not in ("GET", "HEAD"):
            if scope["method"] != "POST":
                return 405, "only GET, HEAD and POST"
            if guard.read_only:
                return 403, "this server is read-only (--read-only)"
            origin = headers.get("origin") or headers.get("referer")
            if not origin or not host:
                return 403, "a POST needs an Origin header (cross-site requests are refused)"
            parts = urlsplit(origin)
            if parts.netloc.lower() != host.lower() or parts.scheme not in ("http", "https"):
                return 403, "cross-site request refused (Origin does not match this server)"
        return None


async def _refuse(send: Send, path: str, status: int, message: str) -> None:
    """Errors before routing: JSON for the API, plain text elsewhere (no user input echoed)."""
    if path.startswith("/api/"):
        body = json.dumps({"error": message, "status": status}).encode()
        ctype = b"application/json"
    else:
        body = f"{status}: {message}\n".encode()
        ctype = b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype), (b"content-length", str(len(body)).encode()),
        (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


async def _redirect_with_cookie(send: Send, location: str, token: str) -> None:
    cookie = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", location.encode("ascii")),
        (b"set-cookie", cookie.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
