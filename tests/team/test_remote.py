"""`ddmops remote check` against a real S3 API: passes on a writable bucket; on a missing
bucket, refused or missing credentials, or a dead or silent endpoint it fails within
seconds with one line and no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from ddmops.ops.remote import RemoteError, check_bucket, target_from_url
from tests.team.conftest import BIN, CREDENTIALS, aws_env, free_port, s3_client, set_env, start_moto, stop


def ddmops(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ddmops"), *args], cwd=cwd, env=dict(os.environ), capture_output=True,
                          text=True, timeout=60)


def failure(url: str, timeout: float = 2.0) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(RemoteError) as info:
        check_bucket(target_from_url(url), timeout=timeout)
    return str(info.value), time.monotonic() - start


def test_check_passes_on_a_writable_bucket_and_cleans_up(bucket, s3_env):
    summary = check_bucket(target_from_url(f"s3://{bucket}/dvc"))
    assert "reachable and writable" in summary and "credentials: env" in summary
    assert s3_client(s3_env).list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # probe deleted


def test_missing_bucket(s3_env):
    message, seconds = failure("s3://no-such-bucket-here/dvc")
    assert "bucket 'no-such-bucket-here' does not exist" in message and seconds < 5


def test_unreachable_endpoint(s3_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    message, seconds = failure("s3://any-bucket/x")
    assert "cannot reach the endpoint" in message and seconds < 5


def test_silent_endpoint_times_out(s3_env, monkeypatch):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        message, seconds = failure("s3://any-bucket/x", timeout=1.0)
    assert "did not answer within 1 s" in message and seconds < 4


def test_no_credentials(s3_env, monkeypatch):
    for key in CREDENTIALS:
        monkeypatch.delenv(key)
    message, _ = failure("s3://any-bucket/x")
    assert "no AWS credentials found" in message


def test_wrong_credentials(tmp_path, monkeypatch):
    proc, endpoint = start_moto(tmp_path / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="0")  # checks keys
    try:
        set_env(monkeypatch, aws_env(endpoint, tmp_path))
        message, seconds = failure("s3://any-bucket/x")
    finally:
        stop(proc)
    assert "credentials were refused (InvalidAccessKeyId)" in message and seconds < 5


def test_cli_passes_and_fails_cleanly(bucket, s3_env):
    ok = ddmops("remote", "check", f"s3://{bucket}/dvc", "--endpoint-url", s3_env)
    assert ok.returncode == 0 and "reachable and writable" in ok.stdout, ok.stderr
    bad = ddmops("remote", "check", "s3://missing-bucket/dvc")
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"error: bucket 'missing-bucket' does not exist at {s3_env}"
    for out in (ok, bad):
        assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in out.stdout + out.stderr


def test_cli_without_url_needs_a_dvc_remote(s3_env, tmp_path):
    result = ddmops("remote", "check", cwd=tmp_path)
    assert result.returncode == 1 and "no usable DVC repository" in result.stderr
    assert "Traceback" not in result.stderr
