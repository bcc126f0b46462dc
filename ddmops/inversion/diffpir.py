"""DiffPIR (Zhu et al. 2023) with a flow prior: the restoration solver of DDM4IP step 3.

Noise levels follow DiffPIR's DDPM schedule (1000 linear-beta steps, visited on a
square-root grid) and are mapped exactly to flow times t = 1 / (1 + sigma). Each step
denoises with the prior's x0-prediction, pulls the estimate towards the data with the
proximal step of ||y - A x||^2 (weight rho_k = lam * sigma_n^2 / sigma_k^2, solved by
conjugate gradients), then re-noises to the next level mixing the implied noise with
fresh noise (share ``zeta``).
"""

from __future__ import annotations

import math

import torch

from ddmops.config import DiffPirConfig
from ddmops.flow import path as fpath
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.cg import solve_normal
from ddmops.operators.base import Operator


def diffpir_sigmas(steps: int, num_train: int = 1000) -> torch.Tensor:
    """Decreasing noise levels (steps,) in float64: DiffPIR's sqrt-spaced DDPM steps."""
    seq = torch.sqrt(torch.linspace(0, num_train ** 2, steps, dtype=torch.float64)).long()
    seq[-1] = seq[-1] - 1
    ab = fpath.ddpm_alpha_bar(torch.arange(num_train), num_train)
    sigma = torch.sqrt((1 - ab) / ab).flip(0)
    return sigma[seq.clamp(0, num_train - 1)]


@torch.no_grad()
def diffpir(y: torch.Tensor, op: Operator, prior: FlowPrior, cfg: DiffPirConfig, *, sigma_n: float,
            generator: torch.Generator) -> torch.Tensor:
    """Restore x from y = A(x) + sigma_n n with ``cfg``'s steps, lam, zeta and cg_iters.
    y: (B, C, h, w) -> x: op.input_shape(y.shape) in [-1, 1]."""
    steps, lam, zeta = cfg.steps, cfg.lam, cfg.zeta
    sigmas = diffpir_sigmas(steps)
    times = [fpath.t_from_sigma(s.item()) for s in sigmas]

    def noise(shape):
        return torch.randn(shape, generator=generator, device=generator.device).to(y)

    x_init = op.A_adjoint(y)
    x_t = times[0] * x_init + (1 - times[0]) * noise(x_init.shape)
    x0 = x_init
    for i, (t, sigma_k) in enumerate(zip(times, sigmas.tolist())):
        x0 = prior.denoise(x_t, t).clamp(-1, 1)
        if i == len(times) - 1:
            break
        rho = lam * sigma_n ** 2 / sigma_k ** 2
        x0 = solve_normal(op, y, max(rho, 1e-8), x0, iters=cfg.cg_iters).clamp(-1, 1)
        eps = fpath.eps_from_x0(x_t, x0, t)
        t_next = times[i + 1]
        x_t = t_next * x0 + (1 - t_next) * (math.sqrt(1 - zeta) * eps + math.sqrt(zeta) * noise(x0.shape))
    return x0
