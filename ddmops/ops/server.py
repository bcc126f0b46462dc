"""The shared MLflow tracking server of team mode: its command line, start, health wait, stop.

By default the server proxies artifacts (``--serve-artifacts``): workers upload through it
to the artifact destination (a folder or ``s3://bucket/prefix``), so only the server needs
S3 credentials. ``proxy=False`` makes workers write to the store themselves instead.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ddmops.errors import DdmopsError
from ddmops.ops.environment import QUIET_ENV

# MLflow's own defaults (loopback + private networks), which --allowed-hosts replaces
PRIVATE_HOSTS = ("10.*", "192.168.*", *(f"172.{i}.*" for i in range(16, 32)))
# SQLAlchemy dialect -> the driver module the server needs installed
DB_DRIVERS = {"postgresql": "psycopg2", "postgresql+psycopg2": "psycopg2", "postgresql+psycopg": "psycopg",
              "postgresql+pg8000": "pg8000", "mysql": "MySQLdb", "mysql+pymysql": "pymysql"}


class ServerError(DdmopsError):
    """The tracking server cannot start, or does not answer."""


@dataclass(frozen=True)
class ServerSpec:
    backend_store_uri: str                  # sqlite:///abs.db, postgresql://user@host/db, ...
    artifacts: str                          # a folder or s3://bucket/prefix
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    proxy: bool = True                      # workers send artifacts through the server
    names: tuple[str, ...] = ()             # host names workers (or a reverse proxy) use for it

    @property
    def local_uri(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def public_names(self) -> tuple[str, ...]:
        """Names other machines reach it by: given ones, else this machine's unless bound to loopback."""
        if self.names or is_loopback(self.host):
            return self.names
        return tuple(dict.fromkeys((socket.gethostname(), socket.getfqdn())))

    @property
    def team_uri(self) -> str:
        """The URI other machines export (the first public name, else the local URI)."""
        return f"http://{self.public_names[0]}:{self.port}" if self.public_names else self.local_uri


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def artifact_location(artifacts: str) -> str:
    """An s3:// (or other) URI as given; a local folder as an absolute file URI."""
    return artifacts if "://" in artifacts else Path(artifacts).expanduser().resolve().as_uri()


def command(spec: ServerSpec) -> list[str]:
    """`mlflow server` arguments. The backend URI (which may hold a password) is passed in
    the environment instead, so it shows neither in `ps` nor in logs."""
    store = ["--serve-artifacts", "--artifacts-destination"] if spec.proxy else \
        ["--no-serve-artifacts", "--default-artifact-root"]
    cmd = [sys.executable, "-m", "mlflow", "server", *store, artifact_location(spec.artifacts),
           "--host", spec.host, "--port", str(spec.port), "--workers", str(spec.workers)]
    if spec.public_names:  # reachable by name from other machines: allow those Host headers and origins
        hosts = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", *PRIVATE_HOSTS,
                 *(h for n in spec.public_names for h in (n, f"{n}:*"))]
        origins = [*(f"http://{p}" for p in PRIVATE_HOSTS),
                   *(o for n in spec.public_names for o in (f"http://{n}:{spec.port}", f"https://{n}"))]
        cmd += ["--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", ",".join(origins)]
    return cmd


def environment(spec: ServerSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    env = {**QUIET_ENV, **(os.environ if base is None else base)}
    env["MLFLOW_BACKEND_STORE_URI"] = spec.backend_store_uri
    return env


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def preflight(spec: ServerSpec) -> None:
    """Fail in a second, with a reason, on what would otherwise crash the server later."""
    dialect = spec.backend_store_uri.split("://", 1)[0]
    driver = DB_DRIVERS.get(dialect)
    if driver and importlib.util.find_spec(driver) is None:
        package = {"psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}.get(driver, driver)
        raise ServerError(f"backend store {redact(spec.backend_store_uri)} needs the Python package "
                          f"{package}: pip install {package}")
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((spec.host, spec.port))
        except OSError as exc:
            raise ServerError(f"cannot listen on {spec.host}:{spec.port} ({exc.strerror}); "
                              "pick another with --port") from None


class Server:
    """A running `mlflow server` in its own process group; :meth:`stop` ends all of it."""

    def __init__(self, spec: ServerSpec, proc: subprocess.Popen):
        self.spec, self.proc = spec, proc

    @property
    def uri(self) -> str:
        return self.spec.local_uri

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)  # the server and its uvicorn workers
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(spec: ServerSpec, log: Path | None = None, timeout: float = 180.0) -> Server:
    """Start the server and return once its /health answers. Output goes to ``log`` (else to
    this process's stdout/stderr)."""
    preflight(spec)
    out = open(log, "ab") if log else None
    try:
        proc = subprocess.Popen(command(spec), env=environment(spec), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT if out else None, start_new_session=True)
    finally:
        if out:
            out.close()
    server = Server(spec, proc)
    try:
        wait_healthy(server.uri, proc, timeout, log)
    except BaseException:
        server.stop()
        raise
    return server


def wait_healthy(uri: str, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log else ["see its output above"]
            raise ServerError(f"mlflow server exited with code {proc.returncode}: {tail[0] if tail else ''}")
        if health(uri, timeout=2.0) == 200:
            return
        time.sleep(0.3)
    raise ServerError(f"mlflow server did not answer on {uri}/health within {timeout:g} s")


def health(uri: str, timeout: float = 5.0) -> int | OSError:
    """The HTTP status of ``uri``/health, or the error that kept anything from answering."""
    parts = urlsplit(uri.rstrip("/"))
    url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], path=f"{parts.path}/health"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        return exc.reason if isinstance(exc.reason, OSError) else OSError(str(exc.reason))
    except OSError as exc:  # a timeout while reading
        return exc


def require_server(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`ServerError` when nothing answers at ``uri``. Any HTTP answer will do (a
    proxy in front may refuse /health without a login), and so will a TLS certificate this
    check cannot verify (MLflow has its own certificate settings)."""
    answer = health(uri, timeout)
    if isinstance(answer, OSError) and not isinstance(answer, ssl.SSLError):
        raise ServerError(f"MLflow server {redact(uri)} does not answer ({answer}); start it with "
                          "`ddmops server` or fix MLFLOW_TRACKING_URI")
