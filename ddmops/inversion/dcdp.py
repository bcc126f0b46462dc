"""DCDP (Li et al.): decoupled data consistency with diffusion purification.

K outer iterations; each runs N gradient steps on the data term
0.5 ||y - A(x)||^2 (+ 0.5 lam ||x - x_k||^2), warm-started at the current x, then purifies
the result: noise it to the level of DDPM step T_k and denoise with the prior, either
along the probability-flow ODE (``ode``: at most M Euler steps on the DDPM grid, which is
exactly DDIM with eta = 0 on this path) or in one x0-prediction (``tweedie``). As in the
authors' samplers, x0-predictions are clipped to [-1, 1]. T_k decays from T_0 to T_end.
The data term is summed per image, so step sizes do not depend on the image size (DCDP's lr
on a pixel-mean loss corresponds to lr_here = 2 lr / numel(y)).

As in the authors' code, ODE purification may be guided: each step also takes DPS's step
against the gradient of ||y - A(x0_hat)||, of size ``guidance`` in DDPM coordinates (their
configs: 0.3 for deblurring and SR, 1 for inpainting and phase retrieval), at the cost of a
backward pass through the prior per step. Unlike their code, the last step (from DDPM step 0,
where x0_hat(x) = x) is not guided: there the DPS step is a plain gradient step onto the noisy
measurements, sized by neither prior nor noise (with guidance 8, on 64 px inpainting it moves
observed pixels about twice their residual, past y); their configs only met noiseless
inpainting with guidance 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from ddmops.config import DcdpConfig
from ddmops.flow import path as fpath
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.dps import residual_gradient
from ddmops.operators.base import Operator


PurifyMode = Literal["ode", "tweedie"]


@dataclass(frozen=True)
class DcdpState:
    """Where a restoration stands after ``iteration`` outer iterations (for checkpoints)."""

    iteration: int
    x: torch.Tensor  # (B, C, H, W) purified estimate
    x_data: torch.Tensor  # (B, C, H, W) estimate before purification


@dataclass(frozen=True)
class DcdpResult:
    x: torch.Tensor  # (B, C, H, W) the last purified estimate
    x_data: torch.Tensor  # (B, C, H, W) the last estimate before purification (diagnostic)


def purification_schedule(iterations: int, t_start: int, t_end: int = 0,
                          kind: Literal["linear", "cosine"] = "linear") -> list[int]:
    """DDPM steps T_1 >= ... >= T_K (>= 1), decaying from t_start to t_end as in DCDP's code."""
    if iterations > t_start:
        raise ValueError(f"iterations ({iterations}) cannot exceed t_start ({t_start})")
    u = np.linspace(0, 1, iterations)
    if kind == "linear":
        steps = np.flip(np.round(u * (t_start - t_end) + 1e-6).astype(np.int64) + t_end)
    elif kind == "cosine":
        steps = np.round(np.cos(u * np.pi / 2) ** 2 * (t_start - t_end)).astype(np.int64) + t_end
    else:
        raise ValueError(f"unknown schedule {kind!r}; use 'linear' or 'cosine'")
    return [max(1, int(s)) for s in steps]


def data_consistency(x: torch.Tensor, y: torch.Tensor, op: Operator, steps: int, lr: float,
                     optimizer: str = "sgd", momentum: float = 0.9, prox_weight: float = 0.0) -> torch.Tensor:
    """``steps`` optimiser steps on sum_images 0.5 ||y - A(x)||^2 + 0.5 prox_weight ||x - x0||^2."""
    anchor = x.detach()
    x = anchor.clone().requires_grad_(True)
    opt = (torch.optim.SGD([x], lr=lr, momentum=momentum) if optimizer == "sgd"
           else torch.optim.Adam([x], lr=lr))
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * ((op.A(x) - y) ** 2).sum()
            if prox_weight > 0:
                loss = loss + 0.5 * prox_weight * ((x - anchor) ** 2).sum()
            loss.backward()
            opt.step()
    return x.detach()


@torch.no_grad()
def purify(x: torch.Tensor, prior: FlowPrior, ddpm_step: int, mode: PurifyMode, ode_steps: int,
           generator: torch.Generator, guidance: float = 0.0, y: torch.Tensor | None = None,
           op: Operator | None = None) -> torch.Tensor:
    """Noise x to DDPM step ``ddpm_step`` - 1 and denoise it. x: (B, C, H, W) -> same.
    ``guidance`` > 0 (mode 'ode') needs the measurements ``y`` and operator ``op``."""
    t = fpath.t_from_ddpm_step(ddpm_step - 1).item()
    eps = torch.randn(x.shape, generator=generator, device=generator.device).to(x)
    x_t = fpath.interpolate(x, eps, t)
    if mode == "tweedie":
        return prior.denoise(x_t, t).clamp(-1, 1)
    n = min(ode_steps, max(ddpm_step, 1))
    idx = np.unique(np.round(np.linspace(ddpm_step - 1, 0, n)).astype(np.int64))[::-1]
    grid = [fpath.t_from_ddpm_step(int(i)).item() for i in idx] + [1.0]
    for i, t0, t1 in zip(idx, grid[:-1], grid[1:]):  # DDIM (eta = 0): Euler on the flow ODE, but for the clipping
        guided = guidance > 0 and i > 0  # at DDPM step 0, x0_hat(x) = x: a DPS step would just pull x onto y
        if guided:
            x0, grad = residual_gradient(y, op, prior, x_t, t0)
        else:
            x0 = prior.denoise(x_t, t0).clamp(-1, 1)
        x_t = fpath.interpolate(x0, fpath.eps_from_x0(x_t, x0, t0), t1)
        if guided:  # a step of -guidance * grad in DDPM coordinates, carried to the flow path at t0 and t1
            x_t = x_t - guidance * fpath.flow_scale(t0) * fpath.flow_scale(t1) * grad
    return x_t


def dcdp(y: torch.Tensor, op: Operator, prior: FlowPrior, cfg: DcdpConfig, *, mode: PurifyMode = "ode",
         x_shape: torch.Size | None = None, generator: torch.Generator, start: DcdpState | None = None,
         on_iteration: Callable[[DcdpState], None] | None = None) -> DcdpResult:
    """Restore x from y with purification ``mode`` ('ode' or 'tweedie', each with its own
    settings: ``cfg.for_mode(mode)``). y: measurements (B, ...); x: ``x_shape`` (default
    op.input_shape(y.shape)).

    ``start`` continues an interrupted run (with ``generator`` in the state it had then);
    ``on_iteration`` sees the state after every outer iteration."""
    d = cfg.for_mode(mode)
    if d.init == "adjoint":
        if not op.is_linear:
            raise ValueError("init 'adjoint' needs a linear operator; use 'zeros'")
        x = op.A_adjoint(y)
    else:
        x = torch.zeros(x_shape or op.input_shape(y.shape), device=y.device, dtype=y.dtype)
    x_data, done = x, 0
    if start is not None:
        x, x_data, done = start.x.to(y), start.x_data.to(y), start.iteration
    for k, step in enumerate(purification_schedule(d.iterations, d.t_start, d.t_end, d.schedule)[done:], done + 1):
        x_data = data_consistency(x, y, op, d.inner_steps, d.lr, d.optimizer, d.momentum, d.prox_weight)
        x = purify(x_data, prior, step, mode, d.ode_steps, generator, d.guidance, y, op)
        if on_iteration is not None:
            on_iteration(DcdpState(k, x, x_data))
    return DcdpResult(x=x.clamp(-1, 1), x_data=x_data)
