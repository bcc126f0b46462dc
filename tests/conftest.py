"""Shared fixtures: a seeded generator, and a workspace built from the real params.yaml, shrunk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ddmops.strict import apply_overrides
from ddmops.ops.environment import quiet_environment

REPO = Path(__file__).resolve().parents[1]

# The project's own params.yaml with every length cut down: the whole pipeline in about a minute.
TINY = [
    "prepare.max_side=96", "prepare.test_size=40", "prepare.test_crops=2", "prepare.tile_size=32",
    "degrade.deblur.size=5", "degrade.deblur.std=[1.0, 1.0]", "degrade.psf_grid.size=5",
    "degrade.psf_grid.grid=[2, 2]", "degrade.sr_kernel.size=5",
    *[f"train_prior.{d}.{k}" for d in ("clean", "deblur", "psf_grid", "sr_kernel") for k in (
        "model.channels=8", "patch_size=12", "images=256", "batch_size=16", "log_every=128",
        "sample_every=256", "checkpoint_every=256", "eval_patches=8", "sample_steps=2")],
    *[f"learn_operator.{t}.{k}" for t in ("deblur", "psf_grid", "sr_kernel") for k in (
        "images=128", "batch_size=16", "log_every=64", "plot_every=64", "checkpoint_every=64")],
    "learn_operator.deblur.kernel_size=5", "learn_operator.psf_grid.kernel_size=5",
    "learn_operator.psf_grid.grid=[2, 2]", "learn_operator.sr_kernel.sr_struct=[3, 3, 1]",
    "learn_operator.sr_kernel.sr_channels=4",
    *[f"invert.{t}.pnp.{k}" for t in ("deblur", "psf_grid", "sr_kernel") for k in ("iterations=3", "cg_iters=5")],
    "restore.images=1", "restore.batch_size=1", "restore.tile=24", "invert.deblur.tile=24",  # 40 px in tiles
    *[f"restore.{t}.{k}" for t in ("gaussian_deblur", "motion_deblur", "nonlinear_deblur", "inpainting",
                                   "superres", "phase_retrieval") for k in (
        "dcdp.iterations=2", "dcdp.inner_steps=3", "dcdp.ode_steps=2", "dps.steps=3")],
    "restore.gaussian_deblur.operator.kernel.size=5",
    "restore.motion_deblur.operator.kernel.size=5", "restore.nonlinear_deblur.operator.kernel.size=5",
]

quiet_environment()
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def write_workspace(path: Path, overrides: list[str] = ()) -> Path:
    """Copy the project's pipeline files into ``path`` with the tiny params; returns params.yaml."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    apply_overrides(data, TINY + list(overrides))
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", path / "dvc.yaml")
    for folder in ("source", "observed"):  # dvc.yaml dependencies
        (path / "data" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "data" / folder / "README.md", path / "data" / folder / "README.md")
    return path / "params.yaml"


@pytest.fixture
def tiny_workspace(tmp_path, monkeypatch) -> Path:
    """A workspace folder with the tiny params, MLflow pointed at its own SQLite store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return write_workspace(tmp_path / "ws").parent
