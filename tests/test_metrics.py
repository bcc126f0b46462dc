import io
import math

import numpy as np
import torch
from PIL import Image

from ddmops.metrics import best_translation, center_crop, fourier_shift, kernel_errors, psnr, ssim
from ddmops.operators.blur import convolve
from ddmops.operators.kernels import gaussian_kernel


def test_psnr_known_value():
    ref = torch.zeros(2, 3, 8, 8)
    x = ref + 0.2  # 0.1 on the [0, 1] scale -> MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(x, ref), torch.full((2,), 20.0))


def test_ssim_identity_is_one(generator):
    x = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(2))


def test_kernel_errors_shift_invariant():
    k = gaussian_kernel(9, (2.0, 1.0), angle=20.0)
    shifted = torch.roll(torch.nn.functional.pad(k, (2, 2, 2, 2)), (1, -2), (0, 1))
    err = kernel_errors(shifted, k)
    assert err.ncc > 1 - 1e-9 and err.mae < 1e-9 and err.shift == (-1, 2)


def test_kernel_errors_floor_values():
    k = gaussian_kernel(5, (100.0, 100.0))  # nearly uniform 5x5
    err = kernel_errors(torch.ones(1, 1), k)
    assert math.isclose(err.ncc, 0.2, rel_tol=1e-3)  # cos(delta, uniform) = 1/sqrt(25)


def _smooth(generator, size=48):
    """Smooth random images (2, 3, size, size): white noise under a 2 px Gaussian blur."""
    x = torch.randn(2, 3, size + 16, size + 16, generator=generator, dtype=torch.float64)
    return convolve(x, gaussian_kernel(17, (2.0, 2.0)).double(), "valid")


def test_fourier_shift_moves_by_whole_and_fractional_pixels(generator):
    x = _smooth(generator)
    inner = (..., slice(10, -10), slice(10, -10))
    torch.testing.assert_close(fourier_shift(x, (2.0, -3.0))[inner], torch.roll(x, (2, -3), (-2, -1))[inner],
                               atol=1e-3, rtol=0)
    halves = fourier_shift(fourier_shift(x, (0.5, -1.5)), (0.5, -1.5))
    torch.testing.assert_close(halves[inner], torch.roll(x, (1, -3), (-2, -1))[inner], atol=1e-3, rtol=0)
    torch.testing.assert_close(fourier_shift(x, (0.0, 0.0)), x)


def test_best_translation_finds_a_fractional_shift_and_leaves_an_aligned_image(generator):
    ref = _smooth(generator)
    inner = (..., slice(6, -6), slice(6, -6))

    def score(m):
        return -((m - ref)[inner] ** 2).mean()
    assert best_translation(fourier_shift(ref, (0.3, -0.45)), score) == (-0.3, 0.45)
    assert best_translation(ref, score) == (0.0, 0.0)
    assert best_translation(fourier_shift(ref, (2.0, 0.0)), score, reach=1.0) == (-1.0, 0.0)  # no further than reach


def test_center_crop():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert center_crop(x, 2, 4).tolist() == [[[[13.0, 14.0, 15.0, 16.0], [19.0, 20.0, 21.0, 22.0]]]]


def test_noise_estimate_reads_the_noise_of_blurred_images(generator):
    """The wavelet MAD estimate of Gaussian noise added to blurred photos-like images (what real
    observations are): within 10% of the true level, and it grows with it. Saved as JPEG (quality
    95), the finest scale loses the noise (it reads under 40% of it there); the estimate reads the
    next scale and stays within 25%."""
    from ddmops.noise import estimate_noise, mad_sigmas
    from ddmops.operators.blur import Blur
    from tests.test_learner import dead_leaves
    blur = Blur(gaussian_kernel(9, (1.5, 1.5)), "valid")
    clean = [blur.A(x[None])[0] for x in dead_leaves(6, 96, generator)]
    estimates = []
    for sigma in (0.02, 0.05, 0.1):
        noisy = [x + sigma * torch.randn(x.shape, generator=generator) for x in clean]
        estimates.append(estimate_noise(noisy))
        assert abs(estimates[-1] - sigma) <= 0.1 * sigma, (sigma, estimates[-1])
    assert estimates == sorted(estimates)
    sigma, colour = 0.02, [torch.cat(clean[i:i + 3]) for i in (0, 3)]  # (3, H, W): JPEG subsamples the colour
    jpeg = [_jpeg((x + sigma * torch.randn(x.shape, generator=generator)).clamp(-1, 1), 95) for x in colour]
    assert np.median([mad_sigmas(c.double().numpy())[0] for x in jpeg for c in x]) < 0.4 * sigma
    assert abs(estimate_noise(jpeg) - sigma) <= 0.25 * sigma, estimate_noise(jpeg)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """An RGB image (3, H, W) in [-1, 1] through an 8-bit JPEG file and back."""
    buffer = io.BytesIO()
    rgb = np.round((x.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return torch.from_numpy(np.asarray(Image.open(buffer), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
