"""The registry side, attacked as a hostile or unlucky user would: the web UI's token redirect,
Host / token / error handling; watch's webhook deliveries against receivers that redirect or
never stop talking; two watchers sharing one consumer; ``clearml-hooks run`` with odd commands.

Real servers and processes only; every server and process started here is stopped by pid and
every file lives under pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from tests.eventutil import REPO, LocalHTTPServer

PY = sys.executable
TOKEN = "s3cret-token"


# -- the web UI --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A token-protected UI over a store holding one model (made with the SDK)."""
    from clearml_hooks import OutputModel, Task
    from clearml_hooks.ui import UiServer

    root = tmp_path_factory.mktemp("adv-ui")
    env = pytest.MonkeyPatch()
    env.setenv("HOME", str(root))
    env.setenv("CLEARML_HOOKS_HOME", str(root / "store"))
    task = Task.init(project_name="p", task_name="t", output_uri=str(root / "store"),
                     auto_connect_frameworks=False)
    model = OutputModel(task=task, name="m1", tags=["a"])
    model.set_metadata("k", "v")
    model.report_scalar("loss", "val", 0.5, 0)
    task.flush(wait_for_uploads=True)
    store = task.store
    task.close()  # no task left current for the other tests
    srv = UiServer(store, "127.0.0.1", 0, token=TOKEN).start()
    try:
        yield srv
    finally:
        srv.stop()
        store.catalog.close()
        env.undo()


@pytest.fixture(autouse=True)
def _isolated_home():
    """The module's UI store lives across its tests (the ``ui`` fixture sets HOME)."""
    yield


def raw_get(port: int, target: bytes, headers: bytes = b"", host: bytes = b"127.0.0.1"
            ) -> tuple[int, dict[str, str], bytes]:
    """A GET written byte for byte (no client-side quoting): (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + host
                  + b"\r\nConnection: close\r\n" + headers + b"\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if fields.get("transfer-encoding") == "chunked":  # undo chunking: size lines and data
        out, at = bytearray(), 0
        while at < len(body):
            end = body.index(b"\r\n", at)
            n = int(body[at:end], 16)
            if n == 0:
                break
            out += body[end + 2:end + 2 + n]
            at = end + 4 + n
        body = bytes(out)
    return int(lines[0].split()[1]), fields, body


@pytest.mark.parametrize("target", [
    b"/?token=" + TOKEN.encode() + b"&next=//evil.example",
    b"//evil.example/?token=" + TOKEN.encode(),
    b"/%2F%2Fevil.example?token=" + TOKEN.encode(),
    b"/\\evil.example?token=" + TOKEN.encode(),
    b"/%5C%5Cevil.example?token=" + TOKEN.encode(),
    b"/%09/evil.example?token=" + TOKEN.encode(),
    b"/?token=" + TOKEN.encode() + b"&a=%0d%0aSet-Cookie:%20x=1",
    b"/%0d%0aSet-Cookie:%20x=1?token=" + TOKEN.encode(),
])
def test_token_redirect_stays_on_this_site_and_injects_no_header(ui, target):
    """Held: the Location is one path on this server (no //host, no backslash, no tab that a
    browser would strip into //host), CR/LF are percent-encoded, one Set-Cookie."""
    status, headers, _ = raw_get(ui.server_port, target)
    assert status == 303, (status, headers)
    location = headers["location"]
    assert location.startswith("/") and not location.startswith("//"), location
    assert "\\" not in location and not any(c in location for c in "\t\r\n"), location
    assert location[1:2] not in ("/", "\\"), location
    assert TOKEN not in location  # the token leaves the address bar
    assert "x" not in {k for k in headers if k.startswith("set-cookie") and "x=1" in headers[k]}
    assert headers["set-cookie"].startswith("clearml_hooks_ui_token=" + TOKEN + ";")


@pytest.mark.parametrize("credentials", [
    b"", b"Authorization: Bearer \xc3\xa9\r\n", b"Authorization: Bearer \xe9\r\n",
    b"Authorization: Bearer " + TOKEN.encode() + b"\xe9\r\n",
    b"Cookie: clearml_hooks_ui_token=\xe9\xff\r\n",
])
@pytest.mark.parametrize("path", [b"/", b"/api/v1/models"])
def test_a_wrong_token_of_any_bytes_is_a_401_not_a_500(ui, credentials, path):
    """Broke before: hmac.compare_digest raises TypeError on a non-ASCII str, so a token like
    ``é`` (in the header, or ``?token=%C3%A9``) was a 500 instead of a 401."""
    status, headers, body = raw_get(ui.server_port, path, credentials)
    assert status == 401, (status, body)
    if path.startswith(b"/api/"):
        assert json.loads(body)["status"] == 401
    status, _, body = raw_get(ui.server_port, path + b"?token=%C3%A9%00")
    assert status == 401, (status, body)


def test_the_right_token_still_opens_every_way(ui):
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    assert raw_get(ui.server_port, b"/api/v1/models", auth)[0] == 200
    cookie = b"Cookie: clearml_hooks_ui_token=" + TOKEN.encode() + b"\r\n"
    assert raw_get(ui.server_port, b"/api/v1/models", cookie)[0] == 200


@pytest.mark.parametrize("host", [b"evil.example", b"127.0.0.1.evil.example", b"localhost:1:2",
                                  b"127.0.0.1@evil.example", b"[::2]:80", b"0x7f000001",
                                  b"2130706433", b"localhost.evil.example:80"])
def test_a_host_that_is_not_loopback_is_refused(ui, host):
    """Held: the DNS-rebinding shield (421, before the token is even looked at) against port
    tricks, user-info, IPv6 and numeric forms a browser would send as the attacker's name."""
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    status, _, body = raw_get(ui.server_port, b"/api/v1/models", auth, host=host)
    assert status == 421 and json.loads(body)["status"] == 421, (status, body)


@pytest.mark.parametrize(("query", "status"), [
    (b"offset=99999999999999999999999", 400), (b"limit=-99999999999999999999999", 400),
    (b"offset=9223372036854775808", 400), (b"sort=name;drop%20table%20models", 400),
    (b"sort=metric.%27)--/x", 200), (b"columns=metadata.a%27;--,metric.%22/%22", 200),
    (b"where.metadata.k=%3C%27", 400), (b"where.iteration=%3C99999999999999999999999", 200),
    (b"name=%00(((", 200), (b"where.=x", 400),
    (b"columns=" + b",".join(b"metadata.k%d" % i for i in range(99)), 200),
    (b"columns=" + b",".join(b"metadata.k%d" % i for i in range(2000)), 400),
    (b"&".join(b"where.metadata.k%d=x" % i for i in range(500)), 400),
])
def test_hostile_table_queries_are_json_errors_never_500s(ui, query, status):
    """Broke before: an offset beyond a database integer reached SQLite (OverflowError) and
    came back as uvicorn's plain-text 500, not the API's JSON error; and 2,000 columns (a 24 KB
    link) made the HTML table 40 MB and took seconds (every sort link repeats every column):
    columns and conditions are capped, a 400."""
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    got, headers, body = raw_get(ui.server_port, b"/api/v1/models?" + query, auth)
    assert got == status, (got, body[:300])
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    if status != 200:
        assert doc["status"] == status and "Traceback" not in doc["error"]
    got, headers, body = raw_get(ui.server_port, b"/?" + query, auth)  # the HTML table too
    assert got == status and b"Traceback" not in body
    assert headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("target", [b"/api/v1/tasks?offset=99999999999999999999999",
                                    b"/api/v1/models/{id}/scalars?max_samples=99999999999999999999"])
def test_huge_integers_elsewhere_are_400s(ui, target):
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    model_id = json.loads(raw_get(ui.server_port, b"/api/v1/models", auth)[2])["models"][0]["id"]
    target = target.replace(b"{id}", model_id.encode())
    got, _, body = raw_get(ui.server_port, target, auth)
    assert got == 400 and json.loads(body)["status"] == 400, (got, body[:300])


def raw_post(port: int, target: bytes, body: bytes, headers: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode()
                  + b"\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded"
                  + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + headers
                  + b"\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {ln.partition(":")[0].strip().lower(): ln.partition(":")[2].strip()
              for ln in lines[1:]}
    return int(lines[0].split()[1]), fields, rest


def test_edits_from_elsewhere_or_without_the_csrf_token_are_refused(ui):
    """Held: Origin / Referer of another site, ``null``, a look-alike host, and a wrong CSRF
    token are 403s; ``next`` never leaves the site. Broke before: a CSRF value that is not
    ASCII was a 500 (hmac.compare_digest's TypeError), now a 403."""
    from urllib.parse import quote

    port = ui.server_port
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    model_id = json.loads(raw_get(port, b"/api/v1/models", auth)[2])["models"][0]["id"]
    csrf = ui.guard.csrf_token()
    me = f"http://127.0.0.1:{port}".encode()

    def post(origin: bytes | None, token: str = csrf, next_: str = "/", referer=None):
        body = (f"csrf={quote(token)}&action=add_tags&tags=adv&ids={model_id}"
                f"&next={quote(next_)}").encode()
        extra = auth + (b"Origin: " + origin + b"\r\n" if origin is not None else b"")
        extra += b"Referer: " + referer + b"\r\n" if referer is not None else b""
        return raw_post(port, b"/actions/batch", body, extra)

    for origin in (b"http://evil.example", b"null", me + b".evil.example", b"https://127.0.0.1:1",
                   b"ftp://127.0.0.1:" + str(port).encode(), b""):
        assert post(origin)[0] == 403, origin
    assert post(None)[0] == 403  # neither Origin nor Referer
    assert post(None, referer=b"http://evil.example/")[0] == 403
    for bad in ("", "0" * 64, "é" * 64, csrf + "x"):
        status, _, body = post(me, token=bad)
        assert status == 403, (bad, status, body[:200])
    for nxt in ("//evil.example/x", "/\\evil.example", "https://evil.example", "/\t/evil.example",
                "/\r\nSet-Cookie: x=1"):
        status, headers, _ = post(me, next_=nxt)
        assert status == 303, (nxt, status)
        location = headers["location"]
        assert location.startswith("/") and location[1:2] not in ("/", "\\"), location
        assert not any(c in location for c in "\t\r\n"), location
        assert "set-cookie" not in headers
    status, headers, _ = post(None, referer=me + b"/?x=1")  # a same-site Referer is enough
    assert status == 303


def test_read_only_refuses_every_post_even_a_perfect_one(ui):
    from clearml_hooks.ui import UiServer

    with UiServer(ui.store, "127.0.0.1", 0, read_only=True).start() as srv:
        port = srv.server_port
        model_id = json.loads(raw_get(port, b"/api/v1/models")[2])["models"][0]["id"]
        before = json.loads(raw_get(port, f"/api/v1/models/{model_id}".encode())[2])
        body = (f"csrf={srv.guard.csrf_token()}&action=publish&ids={model_id}").encode()
        me = f"http://127.0.0.1:{port}".encode()
        for target in (b"/actions/batch", f"/models/{model_id}/actions/publish".encode()):
            assert raw_post(port, target, body, b"Origin: " + me + b"\r\n")[0] == 403
        for method in (b"PUT", b"DELETE", b"PATCH"):
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                s.sendall(method + b" /actions/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Connection: close\r\nContent-Length: 0\r\n\r\n")
                assert s.recv(100).split()[1] in (b"403", b"405"), method
        after = json.loads(raw_get(port, f"/api/v1/models/{model_id}".encode())[2])
    assert after["published"] == before["published"] is False


# -- webhooks ------------------------------------------------------------------------------------

def _one_event(catalog):
    from clearml_hooks import OutputModel, Task

    task = Task.init(project_name="p", task_name="t", auto_connect_frameworks=False)
    OutputModel(task=task, name="net", tags=["prod"])
    task.close()
    from clearml_hooks.store import events as ev

    return [e for e in ev.read_after(catalog, 0) if e.kind == "registered"][-1]


def test_a_webhook_that_redirects_is_not_counted_delivered(catalog):
    """Broke before: urllib followed a 302 as a GET without the body; the GET's 200 counted
    as delivered an event the receiver never got. Now a 3xx is a failed try, then a dead
    letter."""
    from clearml_hooks.store import events as ev
    from clearml_hooks.watch import WebhookTarget

    got: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self):
            n = int(self.headers.get("Content-Length") or 0)
            got.append((self.command, self.rfile.read(n)))
            if self.path == "/hook":
                self.send_response(302)
                self.send_header("Location", "/landing")
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

    srv = LocalHTTPServer(Handler)
    try:
        event = _one_event(catalog)
        lines: list[str] = []
        target = WebhookTarget(srv.url, tries=2, backoff=0.01, catalog=catalog,
                               consumer="c", echo=lines.append)
        target.deliver(event, threading.Event())
    finally:
        srv.close()
    assert not any("delivered" in ln for ln in lines), lines
    assert all(method == "POST" for method, _ in got), got
    assert [d["event_id"] for d in ev.dead_letters(catalog, "c")] == [event.id]
    assert any("302" in ln for ln in lines), lines


def test_a_webhook_answering_an_endless_body_does_not_hold_the_watcher(catalog):
    """Broke before: the answer's body was read to its end, so a receiver streaming forever
    (or gigabytes) held the watcher (and grew its memory) for good."""
    from clearml_hooks.watch import WebhookTarget

    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            block = b"x" * 65536
            try:
                while not stop.is_set():
                    self.wfile.write(block)
            except OSError:
                pass

    srv = LocalHTTPServer(Handler)
    lines: list[str] = []
    try:
        event = _one_event(catalog)
        target = WebhookTarget(srv.url, tries=1, timeout=5, echo=lines.append)
        worker = threading.Thread(target=target.deliver, args=(event, threading.Event()),
                                  daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(8)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        srv.close()
    assert elapsed < 8, f"delivery still reading the answer after {elapsed:.1f} s"
    assert any("delivered" in ln for ln in lines), lines


# -- two watchers on one consumer ----------------------------------------------------------------

def _wait(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_catalog(request, tmp_path, monkeypatch):
    """The catalog fixture's SQLite, or a fresh database on the session's PostgreSQL (the
    watch processes find it through CLEARML_HOOKS_CATALOG_URL)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("catalog")
        return
    import uuid

    import psycopg

    from clearml_hooks.store.catalog import SqlCatalog

    pg = request.getfixturevalue("pg_server")
    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg.url.rsplit("/", 1)[0] + "/" + name
    monkeypatch.setenv("CLEARML_HOOKS_CATALOG_URL", url)
    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "store"))
    cat = SqlCatalog(url)
    yield cat
    cat.close()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_two_watchers_with_one_consumer_deliver_each_event_once(any_catalog, tmp_path):
    """Broke before: both read from the stored cursor and each ran the command for every event
    (each event twice). Now the second waits as a standby; after ``kill -9`` of the first it
    takes over from the stored cursor: every event once, in order."""
    import signal

    from clearml_hooks.store import events as ev
    from clearml_hooks.store import model_ops
    from tests.eventutil import Proc

    model_ops.create_model(any_catalog, name="before", project="p")
    out = tmp_path / "delivered"
    cmd = f"echo {{event_id}} >> {out}"
    args = ("watch", "--on", "register", "--consumer", "c", "--exec", cmd)
    first = Proc(*args)
    second = None
    try:
        first.wait_line("as consumer 'c'")
        second = Proc(*args)
        second.wait_line("as consumer 'c'")
        time.sleep(0.5)  # both in their loops
        ids = [model_ops.create_model(any_catalog, name=f"m{i}", project="p") for i in range(4)]
        del ids

        def lines():
            return out.read_text().split() if out.exists() else []

        _wait(lambda: len(lines()) >= 4)
        _wait(lambda: ev.get_cursor(any_catalog, "c") == ev.last_id(any_catalog))
        os.kill(first.proc.pid, signal.SIGKILL)  # idle: its cursor is stored
        first.proc.wait(timeout=10)
        for i in range(4):
            model_ops.create_model(any_catalog, name=f"n{i}", project="p")
        _wait(lambda: len(lines()) >= 8)
        time.sleep(1.0)  # room for a duplicate to show up
        got = [int(x) for x in lines()]
    finally:
        first.stop()
        if second is not None:
            second.stop()
    want = [e.id for e in ev.read_after(any_catalog, 0) if e.kind == "registered"][1:]
    assert got == want, (got, want)
    assert any("standby" in ln for ln in second.lines), second.lines



def test_the_consumer_lock_on_postgresql(pg_server):
    """The PostgreSQL side of the one-reader-per-consumer lock: a second holder is refused
    until the first releases (or its session ends), other consumer names are independent."""
    import uuid

    import psycopg

    from clearml_hooks.store.catalog import SqlCatalog
    from clearml_hooks.watch import ConsumerLock

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    one = SqlCatalog(pg_server.url.rsplit("/", 1)[0] + "/" + name)
    two = SqlCatalog(pg_server.url.rsplit("/", 1)[0] + "/" + name)
    try:
        a, b, other = ConsumerLock(one, "c"), ConsumerLock(two, "c"), ConsumerLock(two, "d")
        assert a.try_acquire()
        assert not b.try_acquire()
        assert other.try_acquire()
        a.release()
        assert b.try_acquire()
        b.release()
        other.release()
    finally:
        one.close()
        two.close()
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


# -- clearml-hooks serve -------------------------------------------------------------------------

class SlowModel:
    """A pickled estimator (imported by the serve process from this module): ``predict`` takes
    ``delay`` seconds when the input's first value is 99; loading takes ``load_delay``."""

    def __init__(self, factor: float, delay: float = 1.5, load_delay: float = 0.0) -> None:
        self.factor, self.delay, self.load_delay = factor, delay, load_delay

    def __setstate__(self, state):
        self.__dict__.update(state)
        time.sleep(self.load_delay)

    def predict(self, x):
        if float(x.ravel()[0]) == 99.0:
            time.sleep(self.delay)
        return x.ravel() * self.factor


def _post_json(url: str, doc: dict, timeout: float = 10) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _infer(url: str, value: float) -> float:
    doc = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [value]}]}
    return _post_json(url + "/infer", doc)["outputs"][0]["data"][0]


def test_serve_slow_predict_slow_load_and_a_file_unlike_its_framework(tmp_path, monkeypatch):
    """Broke before: ``predict`` ran on the event loop, so one slow inference stalled every
    other request, ``/v2/health/live`` included. Held: a model that loads slowly is loaded
    beside the one serving (requests keep being answered fast by the old one); a joblib file
    registered as PyTorch fails to load and the old model keeps serving, saying why."""
    import re
    import urllib.request

    import joblib

    from clearml_hooks import OutputModel, Task
    from tests.eventutil import Proc, get_json

    monkeypatch.setenv("CLEARML_HOOKS_HOME", str(tmp_path / "store"))
    task = Task.init(project_name="srv", task_name="t", auto_connect_frameworks=False)

    def register(obj, framework="ScikitLearn", ext=".joblib"):
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}{ext}"
        joblib.dump(obj, path)
        om = OutputModel(task=task, name="reg", framework=framework, tags=["prod"])
        om.update_weights(str(path), async_enable=False)
        return om.id

    register(SlowModel(1.0))
    server = Proc("serve", "--project", "srv", "--name", "reg", "--tag", "prod",
                  "--endpoint", "reg", "--port", "0")
    pool: list[threading.Thread] = []
    try:
        line = server.wait_line("clearml-hooks serve: http://", timeout=60)
        url = re.search(r"(http://\S+/v2/models/reg)", line).group(1)
        base = url.rsplit("/v2/", 1)[0]
        assert _infer(url, 3.0) == 3.0
        slow = threading.Thread(target=_infer, args=(url, 99.0), daemon=True)
        pool.append(slow)
        slow.start()
        time.sleep(0.3)  # the slow inference is running
        started = time.monotonic()
        with urllib.request.urlopen(base + "/v2/health/live", timeout=10) as resp:
            assert resp.status == 200
        assert _infer(url, 4.0) == 4.0
        took = time.monotonic() - started
        assert took < 0.8, f"health and a fast inference waited {took:.2f} s for a slow one"
        slow.join(10)

        second = register(SlowModel(2.0, load_delay=1.5))
        answers = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            value = _infer(url, 5.0)
            answers.append((value, time.monotonic() - t0))
            if value == 10.0:
                break
        assert answers[-1][0] == 10.0, answers
        assert max(dt for _, dt in answers) < 0.8, answers  # never waited for the load
        assert {v for v, _ in answers} <= {5.0, 10.0}

        bad = register(SlowModel(3.0), framework="PyTorch", ext=".pt")
        server.wait_line(f"model {bad} (reg) failed to load", timeout=20)
        status, meta = get_json(url)
        assert status == 200 and meta["parameters"]["model_id"] == second
        assert bad in meta["parameters"]["last_error"]
        assert _infer(url, 1.0) == 2.0
    finally:
        server.stop()
        task.close()
        for t in pool:
            t.join(5)


# -- clearml-hooks run ---------------------------------------------------------------------------

def _run_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_HOOKS_")}
    env.update(CLEARML_HOOKS_HOME=str(tmp_path / "store"), HOME=str(tmp_path),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def _run(tmp_path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "clearml_hooks", "run", *args], env=env or _run_env(tmp_path),
                          cwd=tmp_path, capture_output=True, timeout=60, **kw)


def test_run_a_directory_or_a_non_executable_file_is_126(tmp_path):
    """Held: 126 as a shell says, and no task recorded for a command that never ran."""
    script = tmp_path / "not-exec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    for command in (str(tmp_path), str(script)):
        out = _run(tmp_path, "--", command)
        assert out.returncode == 126, (command, out.stderr)
        assert b"Traceback" not in out.stderr


def test_run_passes_unicode_and_odd_arguments_unchanged(tmp_path):
    args = ["é ü 漢字 🙂", "", " lead", "--", "-c", "a\nb", "$HOME", "'\"", "\\"]
    code = "import sys, json; sys.stdout.write(json.dumps(sys.argv[1:]))"
    out = _run(tmp_path, "--", PY, "-c", code, *args)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == args


def test_run_a_command_that_closes_its_stdout_and_stderr(tmp_path):
    """Held: the command's own exit status, and run itself does not die on the closed pipes."""
    code = "import os, time; os.close(1); os.close(2); time.sleep(0.2); raise SystemExit(7)"
    out = _run(tmp_path, "--", PY, "-c", code)
    assert out.returncode == 7, out.stderr


def test_run_through_a_closed_pipe_keeps_the_status(tmp_path):
    """The reader of run's output goes away (``run ... | head -1``)."""
    code = "import sys\nfor i in range(100000): print(i)\n"
    proc = subprocess.Popen([PY, "-m", "clearml_hooks", "run", "--", PY, "-c", code],
                            env=_run_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"0\n"
        proc.stdout.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    # the child dies of SIGPIPE / BrokenPipeError (status 1 or 120); run ends the same way
    assert proc.returncode in (1, 120, -13), proc.returncode


def test_run_with_a_child_that_ignores_sigterm(tmp_path):
    """SIGTERM to run is passed on; a child that ignores it keeps running, and run waits for it
    (it neither exits early nor leaves the child orphaned); SIGKILL of the child ends both."""
    import signal

    pid_file = tmp_path / "child.pid"
    code = (f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)")
    proc = subprocess.Popen([PY, "-m", "clearml_hooks", "run", "--", PY, "-c", code],
                            env=_run_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    child = None
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, "run exited while its command still runs"
        os.kill(child, 0)  # still alive
        os.kill(child, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_run_with_a_sitecustomize_dir_already_on_pythonpath(tmp_path):
    """Held: the user's sitecustomize still runs, once per process (run, the command and a
    python it starts), and the command exits as it would."""
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nopen(os.environ['MARK'], 'a').write(f'{os.getpid()}\\n')\n")
    env = _run_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    env["MARK"] = str(tmp_path / "mark")
    code = ("import subprocess, sys; "
            "sys.exit(subprocess.call([sys.executable, '-c', 'raise SystemExit(5)']))")
    out = _run(tmp_path, "--", PY, "-c", code, env=env)
    assert out.returncode == 5, out.stderr
    pids = (tmp_path / "mark").read_text().split()
    assert len(pids) == len(set(pids)) == 3, pids  # run itself, the command, its child
