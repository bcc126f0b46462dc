"""Team mode fixtures: a real S3 API (moto's standalone server) on a free loopback port,
and AWS variables for it set per test (never written to a file)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# moto accepts any key; distinctive values let tests check that no output shows them
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "DDMOPSTESTKEY", "AWS_SECRET_ACCESS_KEY": "ddmops-test-secret-value"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with code {proc.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:g} s")


def stop(proc: subprocess.Popen) -> None:
    """End a server started with start_new_session=True, and its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def start_moto(log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_listening(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


def aws_env(endpoint: str, tmp: Path, **extra: str) -> dict[str, str]:
    """Variables a worker sets for an S3 endpoint; ~/.aws and instance metadata are shut out."""
    return {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds"),
            "MLFLOW_S3_ENDPOINT_URL": endpoint, **extra}


def set_env(mp: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(key, raising=False)
    for key, value in env.items():
        mp.setenv(key, value)


def new_bucket(endpoint: str) -> str:
    name = f"ddmops-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def s3_client(endpoint: str):
    import boto3
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """One moto S3 server for the session (data in memory; each test makes its own bucket)."""
    proc, endpoint = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield endpoint
    stop(proc)


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch, tmp_path) -> str:
    """The AWS variables of a worker pointed at the moto endpoint, for this test only."""
    set_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    return moto_endpoint


@pytest.fixture
def bucket(s3_env) -> str:
    return new_bucket(s3_env)
