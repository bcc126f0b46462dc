"""Distribution matching at second order: an operator's magnitude response from the power
spectra of unpaired clean and observed patches.

For y = (k * x) subsampled by s, plus white noise of std sigma, the power spectra (per pixel,
windowed, mean removed) satisfy

    S_y(f) = fold_s(|K|^2 S_x)(f) / s^2 + sigma^2

where fold_s sums the s x s aliases of the fine grid onto the coarse one (s = 1: no folding).
Clean and observed sets need not be paired: their average spectra are enough. The magnitude
|K| so found fixes a blur up to its phase (a centred Gaussian entirely); the distribution-
matching learner, which sees whole distributions, decides the rest. Used to initialise the
learned operator (an anisotropic Gaussian fitted per PSF, :func:`fit_gaussians`) and as the
regulariser ``reg.spectral`` (:func:`spectral_loss`). For a PSF grid, each observed crop counts
towards the nodes around its centre with its bilinear weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddmops.data import PatchSampler
from ddmops.operators.psf_grid import bilinear_weights

SNR_MIN = 3.0  # frequencies where the observation's power is at least this times the noise's


@dataclass(frozen=True)
class SpectralTarget:
    """Observed spectra (N, P, P) (one per PSF: N = 1 but for grids), the clean spectrum on the
    fine grid (sP, sP), the noise power and which frequencies to trust (N, P, P)."""

    observed: torch.Tensor
    clean: torch.Tensor
    noise: float
    weight: torch.Tensor
    factor: int

    @property
    def patch(self) -> int:
        return self.observed.shape[-1]


def _window(p: int) -> torch.Tensor:
    w = torch.hann_window(p, periodic=False, dtype=torch.float64)
    return w[:, None] * w[None]


def periodograms(patches: torch.Tensor) -> torch.Tensor:
    """Per-pixel power spectra of patches (B, C, P, P), windowed, mean removed, averaged over
    channels. -> (B, P, P) float64"""
    x = patches.double()
    x = x - x.mean((-1, -2), keepdim=True)
    w = _window(x.shape[-1]).to(x.device)
    return (torch.fft.fft2(x * w).abs() ** 2).mean(1) / (w ** 2).sum()


def spectral_target(clean: PatchSampler, observed: PatchSampler, sigma: float, factor: int = 1,
                    grid: tuple[int, int] = (1, 1), crops: int = 4096,
                    generator: torch.Generator | None = None) -> SpectralTarget:
    """Average spectra of ``crops`` random crops of each set; ``clean`` crops s times the side of
    the observed ones (the samplers' patch sizes must say so). With a ``grid`` (Gy, Gx), the
    observed spectrum is taken per node, each crop weighted by its centre's bilinear weights."""
    g = generator or torch.Generator().manual_seed(0)
    if clean.patch_size != factor * observed.patch_size:
        raise ValueError(f"clean crops of {clean.patch_size} px do not match observed crops of "
                         f"{observed.patch_size} px at factor {factor}")
    s_clean = torch.zeros(clean.patch_size, clean.patch_size, dtype=torch.float64)
    s_obs = torch.zeros(grid[0] * grid[1], observed.patch_size, observed.patch_size, dtype=torch.float64)
    mass = torch.zeros(grid[0] * grid[1], dtype=torch.float64)
    batch = 256
    for start in range(0, crops, batch):
        n = min(batch, crops - start)
        s_clean += periodograms(clean.sample(n, g)).sum(0).cpu()
        y, pos = observed.sample_with_position(n, g)
        centre = pos.double().flatten(2).mean(-1).cpu()  # (n, 2)
        w = bilinear_weights(centre, grid)  # (n, G)
        s_obs += torch.einsum("ng,npq->gpq", w, periodograms(y).cpu())
        mass += w.sum(0)
    s_obs = s_obs / mass.clamp_min(1e-12)[:, None, None]
    noise = sigma ** 2
    weight = (s_obs > SNR_MIN * noise).double()
    weight[:, 0, 0] = 0  # the mean was removed
    return SpectralTarget(s_obs, s_clean / crops, noise, weight, factor)


def predicted(psfs: torch.Tensor, target: SpectralTarget) -> torch.Tensor:
    """The observed spectra PSFs (N, K, K) would give: fold_s(|K|^2 S_x) / s^2 + sigma^2. -> (N, P, P)"""
    s, p = target.factor, target.patch
    k = torch.fft.fft2(psfs.double(), s=(s * p, s * p)).abs() ** 2  # (N, sP, sP)
    fine = k * target.clean.to(k.device)
    folded = fine.reshape(-1, s, p, s, p).sum((1, 3)) / s ** 2
    return folded + target.noise


def spectral_loss(psfs: torch.Tensor, target: SpectralTarget) -> torch.Tensor:
    """Weighted mean squared log-ratio of predicted to observed spectra, over PSFs and trusted
    frequencies. psfs: (N, K, K) -> scalar (differentiable in psfs)."""
    w = target.weight.to(psfs.device)
    diff = torch.log(predicted(psfs, target)) - torch.log(target.observed.to(psfs.device).clamp_min(1e-12))
    return ((w * diff ** 2).sum((-1, -2)) / w.sum((-1, -2)).clamp_min(1.0)).mean().to(psfs.dtype)


def gaussians(params: torch.Tensor, size: int) -> torch.Tensor:
    """Anisotropic Gaussians (N, K, K) from rows (log std_x / 2, log std_y / 2, angle)."""
    r = (size - 1) / 2
    coords = torch.linspace(-r, r, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    sx, sy, th = (2 * params[:, 0].exp())[:, None, None], (2 * params[:, 1].exp())[:, None, None], params[:, 2, None, None]
    u = torch.cos(th) * xx + torch.sin(th) * yy
    v = -torch.sin(th) * xx + torch.cos(th) * yy
    g = torch.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return g / g.sum((-1, -2), keepdim=True)


def fit_gaussians(target: SpectralTarget, size: int, steps: int = 600) -> torch.Tensor:
    """The centred anisotropic Gaussian PSFs (N, K, K) whose spectra fit ``target`` best."""
    n = target.observed.shape[0]
    start = torch.tensor([[torch.log(torch.tensor(size / 12)).item()] * 2 + [0.0]] * n, dtype=torch.float64)
    best = None
    for angle in (0.0, 0.7854):  # two starting orientations: a fit can stall on the wrong side
        params = (start + torch.tensor([0.0, -0.3, angle], dtype=torch.float64)).requires_grad_(True)
        opt = torch.optim.Adam([params], lr=0.05)
        for _ in range(steps):
            loss = spectral_loss(gaussians(params, size), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            per = _per_psf_loss(gaussians(params, size), target)
        best = (params.detach(), per) if best is None else (
            torch.where((per < best[1])[:, None], params.detach(), best[0]), torch.minimum(per, best[1]))
    return gaussians(best[0], size).float()


def _per_psf_loss(psfs: torch.Tensor, target: SpectralTarget) -> torch.Tensor:
    w = target.weight
    diff = torch.log(predicted(psfs, target)) - torch.log(target.observed.clamp_min(1e-12))
    return (w * diff ** 2).sum((-1, -2)) / w.sum((-1, -2)).clamp_min(1.0)
