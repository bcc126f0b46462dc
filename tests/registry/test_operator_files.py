"""Operators as files and folders (typed PSF operators), and what a served operator computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddmops.errors import DataError
from ddmops.ops.hashing import path_digest
from ddmops.io import save_npz, write_json
from ddmops.operators.blur import Blur
from ddmops.operators.psf_grid import PsfGrid, position_map
from ddmops.operators.psf_operator import BlurKernel, PsfGridKernels, PsfOperator, SrKernel
from ddmops.ops.serving import RequestError, ServedOperator, handle
from pipelines.operators import resolve_operator
from tests.registry.conftest import kernel, psf_grid


def test_folders_files_and_model_folders_resolve_to_the_same_arrays(tmp_path):
    arrays = {"kernel": kernel(), "factor": np.array(2)}
    save_npz(tmp_path / "op" / "operator.npz", arrays)
    save_npz(tmp_path / "model" / "artifacts" / "operator" / "operator.npz", arrays)
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    for ref in ("op", "op/operator.npz", "model", str(tmp_path / "op")):
        got, tags = resolve_operator(ref, tmp_path)
        assert isinstance(got, SrKernel) and got.factor == 2
        np.testing.assert_array_equal(got.kernel, arrays["kernel"])
        assert tags == {"ddmops.operator": str(tmp_path / ref)}
    with pytest.raises(DataError, match="operator file not found"):
        PsfOperator.load(tmp_path / "nothing")


def test_served_operator_reads_every_family_as_a_grid(tmp_path):
    grid = psf_grid(2, 3)
    save_npz(tmp_path / "operator.npz", {"psf_grid": grid})
    limits = {"max_image_side": 20, "max_channels": 1, "max_requests": 2}
    write_json(tmp_path / "operator.json", {"task": "psf_grid", "family": "psf_grid", "limits": limits})
    op = ServedOperator.load(tmp_path)
    np.testing.assert_array_equal(op.grid, grid)
    assert op.describe() == {"task": "psf_grid", "family": "psf_grid", "kernel_size": 7, "grid_shape": [2, 3],
                             "factor": 1, "padding": "valid", "limits": limits}
    # the limits read from operator.json are the ones enforced
    assert handle(op, [{"kind": "apply", "image": np.zeros((20, 20)).tolist()}] * 2)
    for requests, message in (([{"kind": "info"}] * 3, "more than the limit of 2"),
                              ([{"kind": "apply", "image": np.zeros((21, 20)).tolist()}], "limit of 20 x 20"),
                              ([{"kind": "apply", "image": np.zeros((20, 20, 3)).tolist()}], "accepted: 1 to 1")):
        with pytest.raises(RequestError, match=message):
            handle(op, requests)
    blur = ServedOperator(BlurKernel(kernel()))
    assert blur.grid.shape == (1, 1, 9, 9) and blur.describe()["task"] == "deblur"
    np.testing.assert_array_equal(blur.psf_at(0.9, 0.1), kernel())  # a uniform blur: the kernel anywhere
    assert ServedOperator(SrKernel(kernel(), 3)).describe()["family"] == "sr_kernel"
    with pytest.raises(DataError, match="got shape"):
        ServedOperator(BlurKernel(np.ones((3, 4))))


def test_apply_is_the_projects_operator():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((24, 30, 3)).astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    grid = psf_grid(3, 2, size=5)
    expected = PsfGrid(torch.from_numpy(grid), position_map(24, 30)[None]).A(x)[0].permute(1, 2, 0)
    np.testing.assert_array_equal(ServedOperator(PsfGridKernels(grid)).apply(image), expected.numpy())
    k = kernel(size=5)
    expected = Blur(torch.from_numpy(k)).A(x[:, :1])[0, 0]
    np.testing.assert_array_equal(ServedOperator(BlurKernel(k)).apply(image[..., 0]), expected.numpy())
    same = np.ascontiguousarray(np.broadcast_to(k, (3, 2, 5, 5)))  # every node alike: the uniform blur
    np.testing.assert_allclose(ServedOperator(PsfGridKernels(same)).apply(image),
                               ServedOperator(BlurKernel(k)).apply(image), atol=1e-6)
    delta = np.zeros((3, 3), np.float32)
    delta[0, 0] = 1  # true convolution, 'valid': a delta in the kernel's corner picks x[i + 2, j + 2]
    np.testing.assert_array_equal(ServedOperator(BlurKernel(delta)).apply(image), image[2:, 2:])
    sr = ServedOperator(SrKernel(k, 3)).apply(image[:21, :21])
    assert sr.shape == (6, 6, 3)  # (21 - 5) // 3 + 1
    np.testing.assert_allclose(sr, ServedOperator(BlurKernel(k)).apply(image[:21, :21])[::3, ::3], atol=1e-6)
    assert BlurKernel(k).operator().A(x).shape == (1, 3, 20, 26)


def test_folder_digest_is_dvcs_directory_hash(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "x.txt").write_text("a\n")
    (tmp_path / "d" / "sub" / "y.bin").write_text("bb\n")
    assert path_digest(tmp_path / "d") == "238675a2c4bacdaeefeba2b79ef84a9d.dir"  # what `dvc add d` writes
