"""Image and kernel quality metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on [0, 1] intensities. x, ref: (B, C, H, W) in [-1, 1] -> (B,)"""
    from torchmetrics.functional.image import peak_signal_noise_ratio
    return peak_signal_noise_ratio(_to_unit(x), _to_unit(ref), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5). x, ref: (B, C, H, W) in [-1, 1] -> (B,)"""
    from torchmetrics.functional.image import structural_similarity_index_measure
    return structural_similarity_index_measure(_to_unit(x), _to_unit(ref), data_range=1.0, reduction="none")


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Central (h, w) window of (..., H, W)."""
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def fourier_shift(x: torch.Tensor, shift: tuple[float, float]) -> torch.Tensor:
    """x (..., H, W) moved by ``shift`` = (rows, cols) pixels, fractions included: band-limited
    interpolation on the image mirrored to (2H, 2W), which is periodic without jumps, so nothing
    wraps around and the edges ring little."""
    h, w = x.shape[-2:]
    xp = torch.cat([x, x.flip(-1)], -1).double()
    xp = torch.cat([xp, xp.flip(-2)], -2)
    fy = torch.fft.fftfreq(2 * h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(2 * w, dtype=torch.float64)[None]
    phase = torch.exp(-2j * torch.pi * (fy * shift[0] + fx * shift[1]))
    return torch.fft.ifft2(torch.fft.fft2(xp) * phase).real[..., :h, :w].to(x.dtype)


def best_translation(x: torch.Tensor, score, reach: float = 1.0) -> tuple[float, float]:
    """The translation (rows, cols) within ``reach`` px that maximises ``score(fourier_shift(x, t))``
    for images x (B, C, H, W): a quarter-pixel grid, then a 0.05 px grid around its best."""
    def search(centre, step, n):
        grid = [(centre[0] + i * step, centre[1] + j * step) for i in range(-n, n + 1) for j in range(-n, n + 1)]
        grid = [t for t in grid if max(abs(t[0]), abs(t[1])) <= reach + 1e-9]
        return max(grid, key=lambda t: float(score(fourier_shift(x, t))))
    best = search((0.0, 0.0), 0.25, round(reach / 0.25))
    best = search(best, 0.05, 4)
    return round(best[0], 2), round(best[1], 2)


@dataclass(frozen=True)
class KernelErrors:
    ncc: float  # normalised cross-correlation (cosine) at the best integer shift
    mae: float  # mean absolute error at that shift, over the larger support
    shift: tuple[int, int]  # (rows, cols) applied to the estimate


def kernel_errors(est: torch.Tensor, true: torch.Tensor, max_shift: int = 3) -> KernelErrors:
    """Compare two kernels (K1, K1), (K2, K2) after zero-padding to a common odd size.

    A blur kernel is only identifiable up to a translation (it moves the whole image),
    so the estimate is shifted by up to ``max_shift`` pixels to best match the truth.
    """
    size = max(est.shape[-1], true.shape[-1]) + 2 * max_shift
    a, b = _pad_to(est.double(), size), _pad_to(true.double(), size)
    best = None
    for dr in range(-max_shift, max_shift + 1):
        for dc in range(-max_shift, max_shift + 1):
            s = torch.roll(a, (dr, dc), (0, 1))
            ncc = (s * b).sum() / (s.norm() * b.norm()).clamp_min(1e-12)
            if best is None or ncc > best[0]:
                best = (ncc.item(), (s - b).abs(), (dr, dc))
    n = max(est.shape[-1], true.shape[-1]) ** 2
    return KernelErrors(ncc=best[0], mae=best[1].sum().item() / n, shift=best[2])


def _pad_to(k: torch.Tensor, size: int) -> torch.Tensor:
    lo = (size - k.shape[-1]) // 2
    hi = size - k.shape[-1] - lo
    return F.pad(k, (lo, hi, lo, hi))


def luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma (MATLAB's rgb2ycbcr Y) of (B, 3, H, W) in [-1, 1], back in [-1, 1]
    on the same [0, 1] <-> [-1, 1] map (so :func:`psnr` applies). Grey images pass through."""
    if x.shape[1] == 1:
        return x
    u = _to_unit(x)
    y = (16 + 65.481 * u[:, 0] + 128.553 * u[:, 1] + 24.966 * u[:, 2]) / 255
    return (y * 2 - 1)[:, None]


def residual_ratio(y: torch.Tensor, ax: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-image RMS of the measurement residual in units of the noise level: (B, ...) -> (B,).

    Morozov's discrepancy principle: a restoration that explains the data to the noise
    level scores 1; below 1 it fits the noise, above it ignores the data. |ratio - 1| is an
    objective that needs no ground truth."""
    rms = (y - ax).flatten(1).pow(2).mean(1).sqrt()
    return rms / max(sigma, 1e-12)


def kernel_sanity(psfs: torch.Tensor, share: float = 0.99) -> dict[str, float]:
    """What a kernel's shape says without a truth, averaged over PSFs (N, K, K): ``support`` (the odd
    side of the centred square holding ``share`` of the mass, px), ``centre_offset`` (distance of the
    centre of mass from the middle, px; a kernel far off centre shifts the image), ``mass`` (sum) and
    ``negative`` (mass below 0)."""
    from ddmops.operators.kernels import center_of_mass
    k = psfs.double()
    size = k.shape[-1]
    c = (size - 1) / 2
    total = k.clamp_min(0).sum((-1, -2))
    sides = []
    for kernel, mass in zip(k.clamp_min(0), total):
        side = next(s for s in range(1, size + 1, 2) if kernel[(size - s) // 2:(size + s) // 2,
                                                                (size - s) // 2:(size + s) // 2].sum() >= share * mass)
        sides.append(side)
    offset = (center_of_mass(k.clamp_min(0)) - c).norm(dim=-1)
    return {"kernel/support": float(sum(sides) / len(sides)), "kernel/centre_offset": offset.mean().item(),
            "kernel/mass": k.sum((-1, -2)).mean().item(), "kernel/negative": (-k.clamp_max(0)).sum((-1, -2)).mean().item()}
