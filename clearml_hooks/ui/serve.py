"""Running the app: uvicorn in a background thread (tests, notebooks, benchmarks) or in the
foreground (the CLI), on a port of our choosing or any free one (port 0)."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from clearml_hooks.ui.security import Guard, is_loopback

if TYPE_CHECKING:
    from clearml_hooks.store import Store

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
TOKEN_ENV = "CLEARML_HOOKS_UI_TOKEN"


class UiServer:
    """The web UI over one store. The socket is bound in the constructor (so a port in use
    fails at once with ``OSError``); ``start()`` serves in a thread, ``serve_forever()`` blocks."""

    def __init__(self, store: Store, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 token: str | None = None, read_only: bool = False, access_log: bool = False) -> None:
        import uvicorn

        from clearml_hooks.ui.app import create_app

        loopback = is_loopback(host)
        token = token or os.environ.get(TOKEN_ENV) or None
        self.token_generated = False
        if not loopback and token is None:
            token, self.token_generated = secrets.token_urlsafe(24), True
        self.store = store
        self.guard = Guard(loopback_only=loopback, token=token, read_only=read_only)
        self.app = create_app(store, self.guard)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
            self.socket.listen(128)  # connections queue until uvicorn accepts them
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(self.app, log_level="info" if access_log else "warning",
                                access_log=access_log,
                                lifespan="off", server_header=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def server_port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host, port = self.server_address
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        self._server.run(sockets=[self.socket])

    def start(self, timeout: float = 30.0) -> UiServer:
        self._server.config.install_signal_handlers = False  # not the main thread
        self._thread = threading.Thread(target=self.serve_forever, name="clearml-hooks-ui",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web UI did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.socket.close()

    def __enter__(self) -> UiServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_server(store: Store | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                home: str | None = None, **options: Any) -> UiServer:
    """A server over ``store`` (default: the store ``home`` / the environment / config names)."""
    if store is None:
        from clearml_hooks.config import Settings
        from clearml_hooks.store import store_for

        store = store_for(Settings.resolve(home=home))
    store.wait()
    return UiServer(store, host, port, **options)
