"""The linear flow path of DDM4IP and its links to diffusion noise levels.

Time runs from noise (t = 0) to data (t = 1): x_t = (1 - t) * eps + t * x, with the
target velocity x - eps. Dividing by t gives x + sigma * eps with sigma = (1 - t) / t,
so a diffusion noise level sigma (variance-exploding, or a DDPM step through its
alpha_bar) corresponds to flow time t = 1 / (1 + sigma) exactly.
"""

from __future__ import annotations

import math

import torch

TimeSampling = str  # "uniform" | "logit_normal"


def sample_t(n: int, generator: torch.Generator, kind: TimeSampling = "uniform",
             mean: float = 0.0, std: float = 1.0, device=None) -> torch.Tensor:
    """Training times -> (n,) in (0, 1): uniform, or sigmoid of N(mean, std^2)."""
    if kind == "uniform":
        t = torch.rand(n, generator=generator, device=generator.device)
    elif kind == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=generator.device))
    else:
        raise ValueError(f"unknown time sampling {kind!r}; use 'uniform' or 'logit_normal'")
    return t.to(device) if device is not None else t


def _bcast(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() > 0 else t


def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 - t) eps + t x. x, eps: (B, C, H, W); t: scalar or (B,)."""
    t = _bcast(t, x)
    return (1 - t) * eps + t * x


def target_velocity(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return x - eps


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Data prediction (the posterior mean for the exact velocity): x_t + (1 - t) v."""
    return x_t + (1 - _bcast(t, x_t)) * v


def eps_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Noise prediction: x_t - t v."""
    return x_t - _bcast(t, x_t) * v


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The noise that puts x0 at x_t: (x_t - t x0) / (1 - t), for t < 1."""
    t = _bcast(t, x_t)
    return (x_t - t * x0) / (1 - t)


def t_from_sigma(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """Flow time of the diffusion noise level sigma (x + sigma * eps)."""
    return 1.0 / (1.0 + sigma)


def sigma_from_t(t: torch.Tensor | float) -> torch.Tensor | float:
    return (1.0 - t) / t


def ddpm_alpha_bar(step: torch.Tensor | int, num_steps: int = 1000,
                   beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alpha_bar of the linear-beta DDPM schedule at integer ``step`` in [0, num_steps)."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0)[torch.as_tensor(step)]


def t_from_ddpm_step(step: torch.Tensor | int, num_steps: int = 1000) -> torch.Tensor:
    """Flow time equal to DDPM step ``step``: sigma = sqrt((1 - ab) / ab)."""
    ab = ddpm_alpha_bar(step, num_steps)
    return t_from_sigma(torch.sqrt((1 - ab) / ab))


def ddpm_state_to_flow(x_vp: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, float]:
    """Map a DDPM state sqrt(ab) x + sqrt(1 - ab) eps to (x_t, t) on the flow path."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    return x_vp / (a + s), a / (a + s)


def flow_scale(t: float) -> float:
    """x_t / x_vp at flow time t: 1 / (sqrt(ab) + sqrt(1 - ab)) = sqrt(t^2 + (1 - t)^2)."""
    return math.sqrt(t * t + (1 - t) * (1 - t))
