"""DPS (Chung et al. 2023): diffusion posterior sampling, run on the flow prior.

The sampler is DDPM's ancestral one on N steps of the 1000-step linear-beta schedule,
with the state kept in DDPM (variance-preserving) coordinates and mapped exactly to the
flow path to query the prior. After each ancestral step the state moves against the
gradient of ||y - A(x0_hat(x_i))|| (per image, not squared) taken through the prior,
scaled by ``zeta``, as in the authors' code. Costs one prior forward and backward per step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddmops.config import DpsConfig
from ddmops.flow import path as fpath
from ddmops.flow.prior import FlowPrior
from ddmops.operators.base import Operator


def residual_gradient(y: torch.Tensor, op: Operator, prior: FlowPrior, x_t: torch.Tensor,
                      t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPS's measurement gradient on the flow path. x_t: (B, C, H, W) at flow time t ->
    (x0-prediction clipped to [-1, 1], gradient in x_t of sum_images ||y - A(x0_hat(x_t))||
    through that clipped prediction, as in the authors' code), both detached."""
    x_t = x_t.detach().requires_grad_(True)
    with torch.enable_grad():
        x0 = prior.denoise(x_t, t).clamp(-1, 1)
        residual = (y - op.A(x0)).flatten(1).norm(dim=1).sum()
        (grad,) = torch.autograd.grad(residual, x_t)
    return x0.detach(), grad


def dps(y: torch.Tensor, op: Operator, prior: FlowPrior, cfg: DpsConfig, *, x_shape: torch.Size,
        generator: torch.Generator) -> torch.Tensor:
    """Sample x given y = A(x) + n in ``cfg.steps`` steps, guidance scaled by ``cfg.zeta``.
    y: (B, ...) -> x: ``x_shape`` (B, C, H, W) in [-1, 1]."""
    idx = np.unique(np.round(np.linspace(0, 999, cfg.steps)).astype(np.int64))[::-1]
    ab = fpath.ddpm_alpha_bar(torch.as_tensor(idx.copy())).tolist()

    def noise(shape):
        return torch.randn(shape, generator=generator, device=generator.device).to(y)

    x = noise(x_shape)
    for i, a in enumerate(ab):
        a_prev = ab[i + 1] if i + 1 < len(ab) else 1.0
        x_t, t = fpath.ddpm_state_to_flow(x, a)
        x0, grad = residual_gradient(y, op, prior, x_t, t)
        grad = grad * fpath.flow_scale(t)  # x_t = flow_scale(t) * x: the gradient in x
        beta = 1 - a / a_prev
        mean = (math.sqrt(a_prev) * beta / (1 - a)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)) * x
        var = beta * (1 - a_prev) / (1 - a)
        x = mean + (math.sqrt(var) * noise(x.shape) if a_prev < 1.0 else 0.0) - cfg.zeta * grad
    return x.clamp(-1, 1)
