"""The blind kernel start (ddmops/ddm4ip/blind.py): exact least squares, the latent's data fit,
the kernel clean-up, and a motion kernel recovered from unpaired observations alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddmops.config import load_params
from ddmops.ddm4ip.blind import blind_kernel, clean_kernel, gray_tiles, kernel_step, scales, sharp_latent
from ddmops.errors import ConfigError
from ddmops.metrics import kernel_errors
from ddmops.operators.blur import convolve
from ddmops.operators.psf_operator import BlurKernel, PsfGridKernels
from pipelines.evaluate import registration


def _motion(size: int = 9) -> torch.Tensor:
    """An asymmetric L-shaped stroke, heavier at one end (its point reflection is another kernel)."""
    k = torch.zeros(size, size, dtype=torch.float64)
    c = size // 2
    k[c, 1:c + 1] = torch.linspace(1.0, 0.3, c)
    k[c - 3:c, c] = 0.3
    return k / k.sum()


def _shapes(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """Piecewise-constant tiles (N, side, side) in [0, 1]: random overlapping rectangles."""
    x = torch.full((n, side, side), 0.5, dtype=torch.float64)
    for i in range(n):
        for _ in range(6):
            r0, c0 = torch.randint(0, side - 4, (2,), generator=generator).tolist()
            h, w = torch.randint(4, side // 2, (2,), generator=generator).tolist()
            x[i, r0:r0 + h, c0:c0 + w] = torch.rand((), generator=generator, dtype=torch.float64)
    return x


def _blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return convolve(x[:, None], k, "valid")[:, 0]


def test_kernel_step_is_the_least_squares_kernel():
    g = torch.Generator().manual_seed(0)
    k = _motion(7)
    x = torch.rand(16, 40, 40, generator=g, dtype=torch.float64)
    y = _blur(x, k)  # noise-free: the exact kernel zeroes the residual
    est = kernel_step(x, y, torch.zeros_like(k), gamma=1e-9, iters=200)
    assert torch.allclose(est, k, atol=1e-6)


def test_sharp_latent_explains_the_observation():
    g = torch.Generator().manual_seed(1)
    k = _motion(7)
    x = _shapes(4, 48, g)
    y = _blur(x, k)
    lat = sharp_latent(y, k, lam=1e-4)
    assert lat.shape == x.shape
    m = 6  # away from the reflect-padded border
    fit = (_blur(lat, k) - y)[:, m:-m, m:-m].abs().mean()
    blurred_input = (_blur(F.pad(y[:, None], [3] * 4, mode="replicate")[:, 0], k) - y)[:, m:-m, m:-m].abs().mean()
    assert fit < 0.1 * blurred_input  # the observation itself, blurred again, fits far worse


def test_clean_kernel_drops_noise_and_centres():
    k = torch.zeros(9, 9, dtype=torch.float64)
    k[1, 1:4] = 1.0  # a stroke off centre
    k[7, 7] = 0.02  # a stray blob: under FLOOR x peak
    k[6, 0] = -0.5  # negative entries go
    out = clean_kernel(k)
    assert out.min() >= 0 and torch.isclose(out.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (out > 0).sum() == 3
    idx = torch.arange(9, dtype=torch.float64)
    assert abs(float((out.sum(1) * idx).sum()) - 4) <= 0.5 and abs(float((out.sum(0) * idx).sum()) - 4) <= 0.5


def test_scales_grow_to_the_kernel_size():
    assert scales(23) == [5, 7, 9, 13, 17, 23]
    assert scales(5) == [5] and scales(3) == [3]


def test_blind_kernel_recovers_a_motion_kernel_and_its_orientation():
    g = torch.Generator().manual_seed(2)
    k = _motion(9)
    y = _blur(_shapes(48, 56, g), k)
    y = y + 0.005 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    est = blind_kernel(y, 9)
    assert est.shape == (9, 9) and est.min() >= 0 and torch.isclose(est.sum(), torch.tensor(1.0, dtype=torch.float64))
    ncc, flipped = kernel_errors(est, k).ncc, kernel_errors(est.flip(0, 1), k).ncc
    assert ncc > 0.85 and ncc > flipped + 0.1


def test_gray_tiles_cut_and_limit():
    imgs = [torch.zeros(3, 70, 130), torch.ones(3, 64, 64)]
    tiles = gray_tiles(imgs, 64, 10, torch.Generator().manual_seed(0))
    assert tiles.shape == (3, 64, 64)  # two from the first photo, one from the second
    assert tiles.dtype == torch.float64 and set(tiles[:, 0, 0].tolist()) == {0.5, 1.0}
    assert gray_tiles(imgs, 64, 2, torch.Generator().manual_seed(0)).shape[0] == 2
    with pytest.raises(ValueError, match="no observed image holds a 80 px tile"):
        gray_tiles([torch.zeros(3, 70, 70)], 80, 10, torch.Generator())


def test_blind_start_is_for_uniform_blur_only(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("learn_operator:\n  psf_grid:\n    init: blind\n")
    with pytest.raises(ConfigError, match="learn_operator.psf_grid.init: 'blind' needs the blind start"):
        load_params(p)


def test_registration_moves_a_translated_kernel_s_picture_back():
    """A learned kernel equal to the truth up to a translation restores the truth image moved by
    it: evaluate places that restoration back by the kernels' shift."""
    true = torch.zeros(9, 9, dtype=torch.float64)
    true[2, 3:7] = 1.0  # a stroke above the centre: its picture moves
    learned = torch.roll(true, (2, -1), (0, 1))
    truth_op, learned_op = BlurKernel.from_psfs(true[None]), BlurKernel.from_psfs(learned[None])
    dr, dc = registration(learned_op, truth_op)
    assert (dr, dc) == (-2, 1)
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y_true, y_learned = convolve(x, true, "valid"), convolve(torch.roll(x, (dr, dc), (-2, -1)), learned, "valid")
    assert torch.allclose(y_true[..., 3:-3, 3:-3], y_learned[..., 3:-3, 3:-3])  # the moved image explains y
    grid = PsfGridKernels.from_psfs(true[None].repeat(4, 1, 1), grid=(2, 2))
    assert registration(grid, grid) == (0, 0) and registration(learned_op, None) == (0, 0)


def test_blind_side_reads_four_kernel_widths_and_warns_on_narrower_tiles():
    from pipelines.learn_operator import blind_side
    wide, narrow = [torch.zeros(3, 100, 120)], [torch.zeros(3, 40, 40), torch.zeros(3, 64, 64)]
    assert blind_side(wide, 23) == (92, None)
    assert blind_side(wide, 9) == (64, None)  # at least 64 px where the images allow
    side, note = blind_side(narrow, 23)
    assert side == 40 and "tiles of 40 px" in note and "(92 px)" in note and "sees 18 px" in note
    assert blind_side(narrow, 9) == (40, None)  # 4 kernel widths (36 px) fit
    with pytest.raises(ValueError, match="observed images of 40 px are too small for a 25 px kernel"):
        blind_side(narrow, 25)
