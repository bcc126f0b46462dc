"""Measured PSFs and PSF grids as versioned assets of the workspace."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ddmops.errors import DataError
from ddmops.io import load_array, save_array
from ddmops.operators.kernels import validate_psf


def add_psf(file: Path, folder: Path, name: str | None = None, normalise: bool = False) -> Path:
    """Validate ``file`` (.npy: (K, K) or (Gy, Gx, K, K)) and store it as ``folder/<name>.npy``.

    With ``normalise`` each PSF is clipped at 0 and rescaled to sum 1 first (measured
    PSFs often carry a background offset); NaN, infinities and wrong shapes are refused.
    The stored array is float32. Returns its path.
    """
    array = load_array(file)
    if normalise:
        if not np.isfinite(array).all():
            raise DataError(f"{file}: PSF holds NaN or infinite values")
        array = np.clip(array, 0, None)
        sums = array.sum(axis=(-1, -2), keepdims=True)
        if (sums <= 0).any():
            raise DataError(f"{file}: a PSF is zero everywhere after clipping negatives")
        array = array / sums
    psf = validate_psf(array, str(file))
    name = name or Path(file).stem
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise DataError(f"PSF name {name!r}: use letters, digits, '.', '_' and '-' only")
    target = Path(folder) / f"{name}.npy"
    save_array(target, psf.numpy().astype(np.float32))
    return target


def dvc_track(path: Path, root: Path) -> str:
    """`dvc add` the asset when ``root`` is a DVC repository; returns what happened."""
    if not (root / ".dvc").is_dir() or shutil.which("dvc") is None:
        return "not a DVC repository: stored without `dvc add`"
    done = subprocess.run(["dvc", "add", str(path)], cwd=root, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise DataError(f"dvc add {path} failed: {done.stderr.strip().splitlines()[-1] if done.stderr else ''}")
    return f"tracked by DVC: commit {path.name}.dvc (and push with `dvc push`)"
