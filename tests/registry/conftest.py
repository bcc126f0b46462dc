"""Fixtures: a throwaway MLflow store (SQLite + artifacts in tmp) and known PSF arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddmops.operators.kernels import gaussian_kernel


def kernel(std: tuple[float, float] = (2.0, 1.0), angle: float = 30.0, size: int = 9) -> np.ndarray:
    """A known blur kernel. -> (K, K) float32"""
    return gaussian_kernel(size, std, angle).numpy()


def psf_grid(gy: int = 3, gx: int = 4, size: int = 7) -> np.ndarray:
    """PSFs whose width grows across the field. -> (gy, gx, K, K) float32"""
    return np.stack([np.stack([kernel((0.6 + 0.4 * j, 0.6 + 0.3 * i), 15.0 * (i + j), size) for j in range(gx)])
                     for i in range(gy)])


def make_store(root: Path, monkeypatch) -> str:
    """Point MLflow (this process and servers it starts) at a new SQLite store under ``root``."""
    import mlflow

    from ddmops.ops.tracking import use_tracking
    uri = f"sqlite:///{root / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    use_tracking(uri)
    exp = mlflow.create_experiment("ddmops", artifact_location=(root / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
    return uri


def log_version(operator, metrics: dict[str, float], task: str = "deblur", data_hash: str = "0123abcd.dir"):
    """Log ``operator`` in a run tagged like a learn-operator run; -> the new ModelVersion."""
    import mlflow

    from ddmops.ops.registry import log_operator
    with mlflow.start_run(tags={f"ddmops.data.data/degraded/{task}": data_hash, "ddmops.data.data/prepared": "p"}):
        return log_operator(operator, task=task, metrics=metrics, params={"kernel_size": 9},
                            training_data=f"data/degraded/{task}")


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh tracking store for one test; returns its URI."""
    return make_store(tmp_path, monkeypatch)
