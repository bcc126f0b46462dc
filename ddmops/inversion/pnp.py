"""Plug-and-play restoration by half-quadratic splitting (DPIR, Zhang et al. 2021).

Alternates the data step, the proximal step of ||y - A x||^2 (weight rho_k = lam sigma^2 /
sigma_k^2, solved by conjugate gradients), with a Gaussian denoiser at a noise level sigma_k
that decreases geometrically from ``sigma_start`` to ``sigma_end``; the estimate is the last
denoised image. Deterministic: every denoiser call returns its best (posterior-mean) guess.

``sigma`` is the noise the data term trusts: the last denoising step is that strong, and the
data step fits the observation to about that level.

A denoiser maps noisy images x + s n (B, C, H, W) in [-1, 1] and the level s to an estimate:
the flow prior's x0-prediction at flow time 1 / (1 + s) (:func:`flow_denoiser`) or BM3D
(:func:`bm3d_denoiser`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ddmops.config import PnpConfig
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.cg import solve_normal
from ddmops.operators.base import Operator

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def flow_denoiser(prior: FlowPrior, **kw) -> Denoiser:
    """The prior's posterior mean at noise level s (x + s n = x_t / t with t = 1 / (1 + s))."""
    def denoise(x: torch.Tensor, s: float) -> torch.Tensor:
        t = 1.0 / (1.0 + s)
        return prior.denoise(t * x, t, **kw).clamp(-1, 1)
    return denoise


def bm3d_denoiser() -> Denoiser:
    """BM3D (Dabov et al.) per image, on [0, 1] intensities (the ``bm3d`` package, CPU)."""
    import bm3d

    def denoise(x: torch.Tensor, s: float) -> torch.Tensor:
        u = ((x.detach().double().cpu() + 1) / 2).permute(0, 2, 3, 1).numpy()
        out = np.stack([bm3d.bm3d(img, sigma_psd=s / 2) for img in u])  # s on [-1, 1] is s / 2 on [0, 1]
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(x) * 2 - 1
    return denoise


def sigma_schedule(iterations: int, sigma_start: float, sigma_end: float) -> list[float]:
    """Denoising levels, geometric from ``sigma_start`` to ``sigma_end`` (float64)."""
    sigma_end = min(sigma_end, sigma_start)
    return np.geomspace(sigma_start, max(sigma_end, 1e-4), iterations).tolist()


@torch.no_grad()
def hqs(y: torch.Tensor, op: Operator, denoise: Denoiser, cfg: PnpConfig, *, sigma: float) -> torch.Tensor:
    """Restore x from y = A(x) + noise of std ``sigma``. y: (B, ...) -> x: op.input_shape(y.shape)."""
    # start: A^T y normalised by A^T 1 (near the borders of a 'valid' blur fewer outputs see a pixel)
    z = op.A_adjoint(y) / op.A_adjoint(torch.ones_like(y)).clamp_min(1e-6)
    for s in sigma_schedule(cfg.iterations, cfg.sigma_start, sigma):
        rho = cfg.lam * sigma ** 2 / s ** 2
        x = solve_normal(op, y, max(rho, 1e-8), z, iters=cfg.cg_iters)
        z = denoise(x.clamp(-1.5, 1.5), s)
    return z
