"""Run `mlflow models serve` on a registered operator: the command line, and a context
manager that starts a server on a free loopback port and always stops it (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from ddmops.errors import DdmopsError
from ddmops.ops.environment import QUIET_ENV


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5001) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port)]


def serve_env(tracking_uri: str) -> dict[str, str]:
    """The server's environment: the registry to read, and this interpreter's scripts (uvicorn) on PATH."""
    scripts = str(Path(sys.executable).parent)
    return {**QUIET_ENV, **os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
            "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model_uri: str, tracking_uri: str, timeout: float = 120.0) -> Iterator[str]:
    """Serve ``model_uri`` on 127.0.0.1 and a free port; yields the base URL once /ping answers."""
    port = free_port()
    with running(serve_command(model_uri, "127.0.0.1", port), serve_env(tracking_uri), port, timeout) as url:
        yield url


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], port: int, timeout: float = 120.0) -> Iterator[str]:
    """Run a server ``command`` listening on 127.0.0.1:``port``; yields its URL once /ping answers.
    Its whole process group is stopped on exit, whatever happened."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc, log, timeout)
            yield url
        finally:
            _stop(proc)


def _wait_ready(url: str, proc: subprocess.Popen, log, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise DdmopsError(f"mlflow models serve exited with code {proc.returncode}: {log.read()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.25)
    raise DdmopsError(f"mlflow models serve did not answer {url}/ping within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
