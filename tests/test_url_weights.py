"""Weights registered by an http(s) URL, as ClearML does: registering never contacts the server,
the first read downloads the bytes once into the verified cache, later reads use the cache.

A real HTTP server on 127.0.0.1 serves a temporary folder and logs every request it answers.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest

from clearml_hooks import InputModel, Model, OutputModel


class _LoggingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[tuple[str, str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.command, self.path, int(code)))

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def http_folder(tmp_path):
    """(folder served, base URL, request log); the server is stopped after the test."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[tuple[str, str, int]] = []
    handler = type("Handler", (_LoggingHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _gets(requests: list[tuple[str, str, int]]) -> list[str]:
    return [path for command, path, _code in requests if command == "GET"]


def test_import_model_registers_without_a_request_then_downloads_once(task, http_folder):
    root, base, requests = http_folder
    data = os.urandom(300_000)
    (root / "resnet.pt").write_bytes(data)
    url = f"{base}/resnet.pt"

    model = InputModel.import_model(weights_url=url, name="resnet-http", tags=["web"])
    assert requests == [], "registering a URL must not contact it"
    assert model.url == url and model.ready and model.framework == "PyTorch"
    assert InputModel.import_model(url) == model, "the same URL is the same model"
    assert InputModel.load_model(url) == model
    assert requests == []

    path = model.get_local_copy(raise_on_error=True)
    assert os.path.basename(path) == "resnet.pt"
    with open(path, "rb") as f:
        assert f.read() == data
    assert _gets(requests) == ["/resnet.pt"]

    assert model.get_local_copy(raise_on_error=True) == path
    assert model.get_weights(raise_on_error=True) == path
    assert Model(model.id).get_local_copy() == path
    assert _gets(requests) == ["/resnet.pt"], "later reads use the cache"
    assert Model.query_models(model_name="resnet-http", tags=["web"]) == [model]


def test_a_changed_cached_copy_is_downloaded_again(task, http_folder):
    root, base, requests = http_folder
    data = b"weights" * 1000
    (root / "model.bin").write_bytes(data)
    model = InputModel.import_model(f"{base}/model.bin")
    path = model.get_local_copy(raise_on_error=True)
    with open(path, "r+b") as f:  # someone writes into the cached copy
        f.write(b"XX")
    assert model.get_local_copy(raise_on_error=True) == path
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert _gets(requests) == ["/model.bin", "/model.bin"]
    os.utime(path)  # touched, same bytes: re-hashed, not downloaded
    assert model.get_local_copy(raise_on_error=True) == path
    assert len(_gets(requests)) == 2
    assert model.get_local_copy(raise_on_error=True, force_download=True) == path
    assert len(_gets(requests)) == 3


def test_missing_file_is_a_clear_error(task, http_folder):
    _root, base, requests = http_folder
    model = InputModel.import_model(f"{base}/nothing-here.pt")
    with pytest.raises(ValueError, match=r"not found, HTTP 404.*register_uri"):
        model.get_local_copy(raise_on_error=True)
    assert model.get_local_copy() is None
    assert _gets(requests) == ["/nothing-here.pt", "/nothing-here.pt"]


def test_unreachable_host_is_a_clear_error(task):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = InputModel.import_model(f"http://127.0.0.1:{port}/model.pt")
    with pytest.raises(ValueError, match=r"cannot reach 127\.0\.0\.1 .*check the URL"):
        model.get_weights(raise_on_error=True)


def test_bad_urls_are_refused_before_anything_is_registered(task):
    for url, message in [("ftp://host/model.bin", "unsupported URL scheme 'ftp'"),
                         ("https:///model.pt", "names no host"),
                         ("https://host", "names no file"),
                         ("http://host:port/model.pt", "malformed URL")]:
        with pytest.raises(ValueError, match=message):
            InputModel.import_model(url)
    before = Model.query_models()
    output = OutputModel(task=task, name="refused")
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        output.update_weights(register_uri="gopher://host/model.pt")
    assert output.url is None and not output.ready
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        task.update_output_model("gopher://host/model.pt", name="nope")
    with pytest.raises(ValueError, match="does not exist"):
        task.update_output_model("/no/such/model.pt", name="nope")
    after = Model.query_models()
    assert [m for m in after if m not in before] == [output], "a refused call creates no model"


def test_update_weights_registers_an_http_url(task, http_folder):
    root, base, requests = http_folder
    data = os.urandom(50_000)
    (root / "final.pt").write_bytes(data)
    url = f"{base}/final.pt"

    output = OutputModel(task=task, name="registered-http")
    assert output.update_weights(weights_filename=None, register_uri=url, iteration=7) == url
    assert requests == []
    assert output.url == url and output.ready and output.iteration == 7
    assert Model.query_models(model_name="registered-http") == [output]

    other = OutputModel(task=task, name="registered-alias")
    assert other.update_weights(registered_uri=f"{base}/final.pt?v=2") == f"{base}/final.pt?v=2"
    assert task.update_output_model(url, name="via-task") == url
    assert requests == []

    path = Model(output.id).get_weights(raise_on_error=True)
    with open(path, "rb") as f:
        assert f.read() == data
    assert Model(output.id).get_local_copy(raise_on_error=True) == path
    assert _gets(requests) == ["/final.pt"]
