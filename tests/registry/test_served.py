"""`ddmops registry` and `ddmops serve` end to end: promote, list, show, then a served model
(a free loopback port, stopped by the fixture) answering every request kind and bad payload."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from cli.app import app
from ddmops.ops.model_server import free_port, running, serve_env
from ddmops.operators.psf_operator import BlurKernel
from ddmops.ops.serving import ServedOperator
from tests.conftest import REPO
from tests.registry.conftest import kernel, log_version, make_store

DDMOPS = str(Path(sys.executable).parent / "ddmops")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace whose store holds two deblur versions: v1 (ncc 0.8) and the candidate v2 (ncc 0.7)."""
    root = tmp_path_factory.mktemp("served")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        uri = make_store(root, mp)
        log_version(BlurKernel(kernel()), {"kernel/ncc": 0.8}, data_hash="aaaa1111.dir")
        log_version(BlurKernel(kernel((1.0, 1.0), 0.0)), {"kernel/ncc": 0.7}, data_hash="bbbb2222.dir")
        yield root, uri


def cli(root: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--params", str(root / "params.yaml")], env={"COLUMNS": "160"})


def test_promote_list_show(workspace):
    root, _ = workspace
    result = cli(root, "registry", "promote", "--task", "deblur", "--version", "1")
    assert result.exit_code == 0 and "v1: promoted: first champion (kernel/ncc = 0.8)" in result.output
    result = cli(root, "registry", "promote", "--task", "deblur")  # the candidate, v2, is worse
    assert result.exit_code == 1 and "v2: refused: kernel/ncc 0.7 does not beat champion v1's 0.8" in result.output
    result = cli(root, "registry", "list", "--task", "deblur")
    assert result.exit_code == 0
    rows = [line for line in result.output.splitlines() if line.startswith("│ ")]
    assert "│ 2 " in rows[0] and "candidate" in rows[0] and "0.7" in rows[0] and "bbbb2222" in rows[0]
    assert "│ 1 " in rows[-1] and "champion" in rows[-1] and "aaaa1111" in rows[-1]
    result = cli(root, "registry", "show", "--task", "deblur")
    assert result.exit_code == 0 and "ddmops-psf-deblur v1" in result.output and "aaaa1111.dir" in result.output
    result = cli(root, "registry", "show", "--task", "deblur", "--alias", "best")
    assert result.exit_code == 1 and "models:/ddmops-psf-deblur@best: no such model version" in result.output
    result = cli(root, "registry", "list", "--task", "warp")
    assert result.exit_code == 1 and "unknown task 'warp'; tasks: deblur, psf_grid, sr_kernel" in result.output


@pytest.fixture(scope="module")
def server(workspace):
    """`ddmops serve --task deblur` (the champion, v1) on a free loopback port; stopped afterwards."""
    root, uri = workspace
    assert cli(root, "registry", "promote", "--task", "deblur", "--version", "1").exit_code == 0
    port = free_port()
    command = [DDMOPS, "serve", "--task", "deblur", "--port", str(port), "--params", str(root / "params.yaml")]
    with running(command, serve_env(uri), port) as url, requests.Session() as session:
        yield lambda body: session.post(f"{url}/invocations", json=body, timeout=30)


def test_served_model_answers_each_kind(server):
    image = np.random.default_rng(0).standard_normal((20, 16, 3)).round(3)
    r = server({"inputs": [{"kind": "psf_at", "x": 0.25, "y": 1.0}, {"kind": "grid"},
                           {"kind": "apply", "image": image.tolist()}, {"kind": "info"}]})
    assert r.status_code == 200, r.text
    psf, grid, applied, info = r.json()["predictions"]
    np.testing.assert_array_equal(np.array(psf["psf"], np.float32), kernel())  # the champion's kernel
    np.testing.assert_array_equal(np.array(grid["grid"], np.float32), kernel()[None, None])
    np.testing.assert_array_equal(np.array(applied["image"]), ServedOperator(BlurKernel(kernel())).apply(image))
    assert info["family"] == "blur" and info["kernel_size"] == 9
    side = info["limits"]["max_image_side"]  # the limit it reports is the one it enforces
    assert server({"inputs": [{"kind": "apply", "image": np.zeros((side, 9)).tolist()}]}).status_code == 200
    too_big = server({"inputs": [{"kind": "apply", "image": np.zeros((side + 1, 9)).tolist()}]})
    assert too_big.status_code == 400 and f"larger than the limit of {side} x {side}" in too_big.json()["message"]


@pytest.mark.parametrize("body, message", [
    ({"inputs": [{"kind": "psf_at", "x": 0.5}]}, "request 0: kind 'psf_at' needs field 'y'"),
    ({"inputs": [{"x": 0.5, "y": 0.5}]}, "request 0: missing field 'kind'"),
    ({"inputs": [{"kind": "info"}, {"kind": "psf_at", "x": 1.5, "y": 0.5}]}, "request 1: field 'x' = 1.5 lies outside"),
    ({"inputs": [{"kind": "apply", "image": [[[0.0] * 4] * 16] * 16}]}, "has 4 channels"),
    ({"inputs": [{"kind": "apply", "image": [["dark"] * 16] * 16}]}, "must hold numbers only, found text"),
    ({"inputs": [{"kind": "apply", "image": [[0.5] * 300] * 300}]}, "is 300 x 300, larger than the limit of 256"),
    ({"inputs": [{"kind": "info"}] * 65}, "65 requests in one call, more than the limit of 64"),
    ({"inputs": {"kind": "info"}}, "Expected list, but got dict"),
])
def test_bad_payloads_get_400_naming_the_problem(server, body, message):
    r = server(body)
    assert r.status_code == 400 and message in r.json()["message"], r.text[:500]
    assert len(r.content) < 5000  # a refused image is not echoed back
    ok = server({"inputs": [{"kind": "psf_at", "x": 0.5, "y": 0.5}]})  # and the server goes on serving
    assert ok.status_code == 200 and json.loads(ok.text)["predictions"][0]["kind"] == "psf_at"
