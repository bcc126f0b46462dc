import subprocess

import numpy as np
import pytest

from ddmops.errors import DataError
from ddmops.operators.kernels import gaussian_kernel, lens_psf_grid
from ddmops.ops.psf_assets import add_psf
from tests.test_pipeline import sh


def test_add_kernel_and_grid(tmp_path, generator):
    np.save(tmp_path / "k.npy", gaussian_kernel(7, (1.0, 2.0)).numpy().astype(np.float64))
    np.save(tmp_path / "lens.npy", lens_psf_grid((3, 4), 9, generator).numpy())
    k = add_psf(tmp_path / "k.npy", tmp_path / "psfs")
    g = add_psf(tmp_path / "lens.npy", tmp_path / "psfs", name="lens-v1")
    assert np.load(k).dtype == np.float32 and np.load(g).shape == (3, 4, 9, 9)


@pytest.mark.parametrize("array, fragment", [
    (np.ones((3, 4, 4)) / 16, "expected a PSF"),
    (np.ones((4, 4)) / 16, "odd side"),
    (np.full((2, 2, 3, 3), 1 / 9.0) * np.array([1, 1, 1, np.nan]).reshape(2, 2, 1, 1), r"\[1, 1\]: kernel holds NaN"),
    (np.array([[0, 0, 0], [0, 2.0, 0], [0, 0, -1.0]]), "negative"),
])
def test_bad_psfs_rejected(tmp_path, array, fragment):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=fragment):
        add_psf(tmp_path / "bad.npy", tmp_path / "psfs")
    assert not (tmp_path / "psfs" / "bad.npy").exists()


def test_normalise_measured_psf(tmp_path):
    measured = np.full((5, 5), 0.01) + 3.0 * gaussian_kernel(5, (1.0, 1.0)).numpy() - 0.005
    np.save(tmp_path / "m.npy", measured)
    with pytest.raises(DataError, match="sums to"):
        add_psf(tmp_path / "m.npy", tmp_path / "psfs")
    out = np.load(add_psf(tmp_path / "m.npy", tmp_path / "psfs", normalise=True))
    assert abs(out.sum() - 1) < 1e-5 and out.min() >= 0


def test_cli_adds_and_tracks_with_dvc(tiny_workspace):
    ws = tiny_workspace
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert sh(cmd, ws).returncode == 0
    np.save(ws / "psf.npy", gaussian_kernel(9, (2.0, 1.0)).numpy())
    done = sh(["ddmops", "psf", "add", "psf.npy", "--name", "lab-lens"], ws)
    assert done.returncode == 0, done.stderr
    assert (ws / "data" / "psfs" / "lab-lens.npy.dvc").is_file()
    np.save(ws / "bad.npy", np.ones((4, 4)))
    done = sh(["ddmops", "psf", "add", "bad.npy"], ws)
    assert done.returncode == 1 and "odd side" in done.stderr and "Traceback" not in done.stderr
    assert subprocess.run(["git", "check-ignore", "-q", "data/psfs/lab-lens.npy"], cwd=ws).returncode == 0
