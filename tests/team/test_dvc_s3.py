"""Datasets and PSF assets on an S3 DVC remote, set up as the README says: `dvc push`, wipe
the cache and the files, `dvc pull` brings back the same bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.team.conftest import BIN, CREDENTIALS, s3_client

TRACKED = ("data/source/photos", "assets/psf")


def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout + result.stderr


def write_assets(repo: Path) -> dict[str, bytes]:
    """A few photos and two PSF assets (a kernel, a spatially varying grid of kernels)."""
    rng = np.random.default_rng(0)
    photos, psf = repo / TRACKED[0], repo / TRACKED[1]
    photos.mkdir(parents=True)
    psf.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / f"photo{i}.png")
    x = np.arange(9) - 4
    kernel = np.exp(-(x[:, None] ** 2 + x[None] ** 2) / 4.0)
    np.save(psf / "kernel.npy", (kernel / kernel.sum()).astype(np.float32))
    np.save(psf / "grid.npy", rng.random((3, 3, 9, 9), dtype=np.float32))
    return snapshot(repo)


def snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for d in TRACKED for p in sorted((repo / d).rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_push_wipe_pull_restores_identical_bytes(bucket, s3_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    before = write_assets(repo)
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "config", "core.analytics", "false", cwd=repo)
    sh("dvc", "add", "-q", *TRACKED, cwd=repo)
    # the README's set-up: credentials stay in the environment, only the endpoint is configured
    sh("dvc", "remote", "add", "-d", "s3r", f"s3://{bucket}/dvc", cwd=repo)
    sh("dvc", "remote", "modify", "s3r", "endpointurl", s3_env, cwd=repo)
    assert "reachable and writable" in sh("ddmops", "remote", "check", cwd=repo)  # the default DVC remote

    sh("dvc", "push", cwd=repo)
    stored = s3_client(s3_env).list_objects_v2(Bucket=bucket, Prefix="dvc/")
    assert stored["KeyCount"] >= len(before)  # one object per file, plus the directory listings

    shutil.rmtree(repo / ".dvc" / "cache")
    for d in TRACKED:
        shutil.rmtree(repo / d)
    sh("dvc", "pull", cwd=repo)
    assert snapshot(repo) == before

    config = (repo / ".dvc" / "config").read_text()
    assert s3_env in config and all(v not in config for v in CREDENTIALS.values())
