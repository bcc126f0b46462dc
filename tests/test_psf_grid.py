import pytest
import torch

from ddmops.ddm4ip.models import KernelModel, PsfGridModel, SrKernelModel
from ddmops.operators.blur import convolve
from ddmops.operators.kernels import gaussian_kernel, lens_psf_grid, random_sr_kernel
from ddmops.operators.psf_grid import PsfGrid, bilinear_weights, position_map, psf_at
from ddmops.operators.sr import Downsample


def random_grid(g, gy=3, gx=4, k=5):
    grid = torch.rand(gy, gx, k, k, generator=g, dtype=torch.float64)
    return grid / grid.sum((-1, -2), keepdim=True)


def test_psf_at_is_exact_at_nodes_and_linear_between(generator):
    grid = random_grid(generator)
    gy, gx = grid.shape[:2]
    nodes = torch.tensor([[j / (gx - 1), i / (gy - 1)] for i in range(gy) for j in range(gx)], dtype=torch.float64)
    torch.testing.assert_close(psf_at(grid, nodes), grid.flatten(0, 1), rtol=0, atol=1e-12)
    # along each axis within a cell the interpolation is linear (bilinear: not along diagonals)
    for a, b in [((0.1, 0.2), (0.3, 0.2)), ((0.6, 0.05), (0.6, 0.45))]:
        a, b = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
        for u in (0.25, 0.5, 0.9):
            mid = psf_at(grid, (1 - u) * a + u * b)
            torch.testing.assert_close(mid, (1 - u) * psf_at(grid, a) + u * psf_at(grid, b))
    assert abs(psf_at(grid, torch.tensor([[0.37, 0.81]], dtype=torch.float64)).sum() - 1) < 1e-12


def test_bilinear_weights_partition_unity(generator):
    pos = torch.rand(100, 2, generator=generator)
    w = bilinear_weights(pos, (8, 8))
    torch.testing.assert_close(w.sum(-1), torch.ones(100))
    assert ((w > 0).sum(-1) <= 4).all()


def test_psf_grid_pixel_mode_equals_per_pixel_blur(generator):
    """Blending the node blurs = blurring every output pixel with its own interpolated PSF."""
    grid = random_grid(generator)
    x = torch.randn(1, 2, 13, 11, generator=generator, dtype=torch.float64)
    pos = position_map(13, 11, top=7, left=3, full_h=40, full_w=30)[None].double()
    op = PsfGrid(grid, pos)
    y = op.A(x)
    out_pos = op.output_position()[0]
    for r, c in [(0, 0), (4, 3), (8, 6)]:
        k = psf_at(grid, out_pos[:, r, c][None])[0]
        ref = convolve(x[:, :, r:r + 5, c:c + 5], k, "valid")[..., 0, 0]
        torch.testing.assert_close(y[..., r, c], ref)


def test_psf_grid_uniform_grid_is_plain_blur(generator):
    k = gaussian_kernel(5, (1.2, 0.7), 20.0).double()
    grid = k.expand(3, 3, 5, 5).clone()
    x = torch.randn(2, 3, 12, 12, generator=generator, dtype=torch.float64)
    pos = position_map(12, 12)[None].expand(2, -1, -1, -1).double()
    torch.testing.assert_close(PsfGrid(grid, pos).A(x), convolve(x, k, "valid"))


def test_lens_field_grows_to_corners(generator):
    grid = lens_psf_grid((5, 5), 15, generator)
    assert grid.shape == (5, 5, 15, 15) and torch.allclose(grid.sum((-1, -2)), torch.ones(5, 5))
    peak = grid.flatten(2).max(-1).values
    assert peak[2, 2] > peak[0, 0] and peak[2, 2] > peak[4, 4]  # sharper at the centre


def test_sr_kernel_recipe(generator):
    k = random_sr_kernel(4, generator)
    assert k.shape == (25, 25) and abs(k.sum() - 1) < 1e-6 and (k >= 0).all()
    assert not torch.equal(k, random_sr_kernel(4, generator))  # random


def test_sr_model_delta_readout_equals_network(generator):
    model = SrKernelModel(2, generator, struct=(5, 3, 1), channels=4).double()
    for w in model.layers:
        w.data.normal_(0, 0.3, generator=generator)
    x = torch.randn(2, 3, 21, 19, generator=generator, dtype=torch.float64)
    k = model.effective_kernel()
    assert k.shape == (7, 7)
    torch.testing.assert_close(model(x), Downsample(k, 2, "valid").A(x))
    assert model(x).shape[-2:] == (8, 7) and model.crop_size(8) == 21


def test_models_input_sizes_match_prior_patch(generator):
    pos = position_map(20, 20)[None].expand(3, -1, -1, -1)
    x = torch.randn(3, 3, 20, 20, generator=generator)
    blur = KernelModel(5, "gaussian", generator)
    grid = PsfGridModel((4, 4), 5, "gaussian", generator)
    assert blur(x).shape[-1] == 16 and blur.crop_size(16) == 20
    assert grid(x, pos).shape[-1] == 16 and grid.crop_size(16) == 20
    assert torch.allclose(grid.kernels().sum((-1, -2)), torch.ones(16))
    with pytest.raises(ValueError, match="positions"):
        grid(x)


def test_restoration_task_accepts_a_learned_grid(tmp_path, generator):
    import numpy as np

    from ddmops.config import TaskConfig, TaskOperatorConfig
    from ddmops.operators.psf_operator import field_positions
    from ddmops.tasks import make_problem
    from pipelines.operators import resolve_operator
    grid = random_grid(generator).float().numpy()
    np.savez(tmp_path / "operator.npz", psf_grid=grid)
    cfg = TaskConfig(operator=TaskOperatorConfig(kind="learned", source=str(tmp_path / "operator.npz")))
    x = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    pos = field_positions(torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2), (16, 16))
    p = make_problem(cfg, x, tmp_path, 0, pos, resolve_operator(cfg.operator.source, tmp_path)[0])
    assert p.y.shape == (2, 3, 12, 12)
    torch.testing.assert_close(p.op.A(x), PsfGrid(torch.as_tensor(grid), pos).A(x))
