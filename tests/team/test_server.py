"""`ddmops server`: its command line, its checks before starting, and a real stage logging
through it to an S3 artifact store (moto) - artifacts in the bucket, byte-identical."""

from __future__ import annotations

import configparser
import importlib.util
import io
import os
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddmops.config import load_params
from ddmops.errors import DdmopsError
from ddmops.data import load_image_set
from ddmops.plots import mosaic
from ddmops.ops.server import (ServerError, ServerSpec, command, environment, health, preflight, redact,
                           require_server)
from ddmops.ops.environment import QUIET_ENV
from pipelines.runner import run_stage
from tests.conftest import REPO, write_workspace
from tests.team.conftest import BIN, CREDENTIALS, aws_env, free_port, new_bucket, s3_client

SECRET = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_loopback_server_proxies_artifacts_and_keeps_the_database_url_off_the_command_line():
    spec = ServerSpec(backend_store_uri="postgresql://ml:pw@db/mlflow", artifacts="s3://lab/mlflow", port=5123)
    cmd = command(spec)
    assert option(cmd, "--artifacts-destination") == "s3://lab/mlflow" and "--serve-artifacts" in cmd
    assert option(cmd, "--host") == "127.0.0.1" and option(cmd, "--port") == "5123"
    assert "--allowed-hosts" not in cmd and not any("pw" in part for part in cmd)
    env = environment(spec, base={"DO_NOT_TRACK": "false"})
    assert env["MLFLOW_BACKEND_STORE_URI"] == spec.backend_store_uri
    assert env["DO_NOT_TRACK"] == "false" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"  # user's choice wins
    assert spec.team_uri == spec.local_uri == "http://127.0.0.1:5123"
    assert redact(spec.backend_store_uri) == "postgresql://ml:***@db/mlflow"


def test_public_server_allows_its_names_and_direct_mode_writes_to_the_store(tmp_path):
    spec = ServerSpec(backend_store_uri="sqlite:///x.db", artifacts=str(tmp_path / "art"), host="0.0.0.0",
                      port=5000, proxy=False, names=("mlflow.lab",))
    cmd = command(spec)
    assert "--no-serve-artifacts" in cmd and option(cmd, "--default-artifact-root") == (tmp_path / "art").as_uri()
    hosts, origins = option(cmd, "--allowed-hosts").split(","), option(cmd, "--cors-allowed-origins").split(",")
    assert {"mlflow.lab", "mlflow.lab:*", "localhost:*", "10.*"} <= set(hosts)
    assert "http://mlflow.lab:5000" in origins
    assert spec.team_uri == "http://mlflow.lab:5000" and spec.local_uri == "http://127.0.0.1:5000"


def test_preflight_refuses_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(ServerError, match="cannot listen on 127.0.0.1"):
            preflight(ServerSpec("sqlite:///x.db", "mlartifacts", port=busy.getsockname()[1]))


def test_preflight_names_a_missing_database_driver_without_the_password():
    if importlib.util.find_spec("pg8000"):
        pytest.skip("pg8000 is installed here")
    with pytest.raises(ServerError) as info:
        preflight(ServerSpec("postgresql+pg8000://ml:s3cret@db/mlflow", "mlartifacts", port=free_port()))
    assert "needs the Python package pg8000" in str(info.value) and "s3cret" not in str(info.value)


def test_project_defaults_keep_telemetry_and_update_checks_off():
    dvc = configparser.ConfigParser()
    dvc.read(REPO / ".dvc" / "config")
    assert dvc["core"]["analytics"] == "false" and dvc["core"]["check_update"] == "false"
    assert {"MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS", "DVC_NO_UPDATE_CHECK"} <= set(QUIET_ENV)


def test_stage_fails_fast_when_the_server_is_down(tiny_workspace, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(DdmopsError, match="does not answer"):
        run_stage("prepare", load_params(tiny_workspace / "params.yaml"), tiny_workspace, progress=False)
    assert time.monotonic() - start < 10


def test_a_server_behind_a_login_counts_as_answering():
    class Locked(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Locked) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            require_server(f"http://127.0.0.1:{httpd.server_port}")  # 401 is an answer
        finally:
            httpd.shutdown()
    with pytest.raises(ServerError, match="does not answer .*refused"):
        require_server(f"http://user:pw@127.0.0.1:{free_port()}")


def test_server_refuses_a_missing_bucket_before_starting(s3_env, tmp_path):
    port = free_port()
    result = subprocess.run([str(BIN / "ddmops"), "server", "--artifacts", "s3://missing-bucket/mlflow",
                             "--port", str(port)], cwd=tmp_path, env=dict(os.environ), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "error: bucket 'missing-bucket' does not exist" in result.stderr
    assert "Traceback" not in result.stderr and isinstance(health(f"http://127.0.0.1:{port}", 1), OSError)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.fixture
def team_server(moto_endpoint, tmp_path):
    """`ddmops server` with its artifact store in a fresh bucket, as a lab would run it."""
    bucket, port, log = new_bucket(moto_endpoint), free_port(), tmp_path / "server.log"
    env = {**os.environ, **aws_env(moto_endpoint, tmp_path)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "ddmops"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'runs.db'}",
             "--artifacts", f"s3://{bucket}/mlflow", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    server = SimpleNamespace(uri=f"http://127.0.0.1:{port}", bucket=bucket, endpoint=moto_endpoint, log=log,
                             proc=proc)
    try:
        deadline = time.monotonic() + 240
        while "export MLFLOW_TRACKING_URI=" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        assert health(server.uri) == 200, log.read_text()[-3000:]
        yield server
    finally:
        kids = children(proc.pid)  # the mlflow server, in its own process group
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for kid in kids:
            try:
                os.killpg(kid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_stage_artifacts_land_in_the_bucket_through_the_server(team_server, tmp_path, monkeypatch):
    ws = write_workspace(tmp_path / "ws").parent
    # a worker: knows the server, holds no S3 credentials (the server proxies artifacts)
    for key in (*CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.uri)
    run_stage("prepare", load_params(ws / "params.yaml"), ws, progress=False)
    assert not (ws / "mlruns").exists() and not (ws / "mlruns.db").exists()  # nothing tracked locally

    import mlflow
    client = mlflow.MlflowClient(team_server.uri)
    exp = client.get_experiment_by_name("ddmops")
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("ddmops.stage") == "prepare"]
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert run.data.metrics["data/test_images"] == 2

    s3 = s3_client(team_server.endpoint)
    prefix = f"mlflow/{exp.experiment_id}/{run.info.run_id}/artifacts/"
    listing = s3.list_objects_v2(Bucket=team_server.bucket, Prefix=prefix)
    stored = {o["Key"][len(prefix):]: s3.get_object(Bucket=team_server.bucket, Key=o["Key"])["Body"].read()
              for o in listing.get("Contents", [])}
    assert set(stored) == {"test_images.png"}
    for name, data in stored.items():  # what MLflow reads back through the server is what the bucket holds
        assert Path(client.download_artifacts(run.info.run_id, name, str(tmp_path))).read_bytes() == data
    # and the bucket holds exactly the image the stage logged: the test crops it wrote to disk
    crops = torch.stack(load_image_set(ws / "data" / "prepared" / "test_clean.npz"))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored["test_images.png"]))), mosaic(crops))

    team_server.proc.send_signal(signal.SIGTERM)  # `kill ddmops` stops the whole server
    assert team_server.proc.wait(30) == 0 and isinstance(health(team_server.uri, 1), OSError)
    log = team_server.log.read_text()
    assert f"export MLFLOW_TRACKING_URI={team_server.uri}" in log and SECRET not in log
