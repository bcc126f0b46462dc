"""ODE solvers for dx/dt = v(x, t) on the flow path; the time grid is built in float64."""

from __future__ import annotations

from typing import Callable, Literal

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Method = Literal["euler", "heun"]


def time_grid(t_start: float, t_end: float, steps: int) -> torch.Tensor:
    """steps + 1 equally spaced times in float64."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


@torch.no_grad()
def integrate(velocity: Velocity, x: torch.Tensor, t_start: float = 0.0, t_end: float = 1.0,
              steps: int = 32, method: Method = "euler") -> torch.Tensor:
    """Integrate from ``t_start`` to ``t_end``. x: (B, ...); velocity(x, t) with t: (B,).

    Euler spends ``steps`` velocity evaluations, Heun (2nd order) ``2 * steps``.
    Returns x(t_end).
    """
    grid = time_grid(t_start, t_end, steps)
    for i in range(steps):
        t0, t1 = grid[i], grid[i + 1]
        h = (t1 - t0).item()
        tb = torch.full((x.shape[0],), t0.item(), dtype=x.dtype, device=x.device)
        v0 = velocity(x, tb)
        if method == "euler":
            x = x + h * v0
        elif method == "heun":
            v1 = velocity(x + h * v0, torch.full_like(tb, t1.item()))
            x = x + 0.5 * h * (v0 + v1)
        else:
            raise ValueError(f"unknown solver {method!r}; use 'euler' or 'heun'")
    return x


def nfe(steps: int, method: Method) -> int:
    """Network evaluations :func:`integrate` spends."""
    return steps if method == "euler" else 2 * steps
