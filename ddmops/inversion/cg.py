"""Batched conjugate gradients for the regularised normal equations of a linear operator."""

from __future__ import annotations

import torch

from ddmops.operators.base import Operator


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.dim() - 1)))


def solve_normal(op: Operator, y: torch.Tensor, rho: float, z: torch.Tensor, iters: int = 20,
                 tol: float = 1e-6) -> torch.Tensor:
    """argmin_x ||y - A x||^2 + rho ||x - z||^2, i.e. (A^T A + rho I) x = A^T y + rho z.

    y: measurements (B, ...); z: (B, C, H, W) anchor, also the starting point. Each image
    of the batch has its own step sizes; iteration stops when every residual is small.
    """
    def normal(v):
        return op.A_adjoint(op.A(v)) + rho * v

    b = op.A_adjoint(y) + rho * z
    x = z.clone()
    r = b - normal(x)
    p = r.clone()
    rs = _dot(r, r)
    b_norm = _dot(b, b).clamp_min(1e-30)
    for _ in range(iters):
        if bool((rs <= tol ** 2 * b_norm).all()):
            break
        ap = normal(p)
        alpha = rs / _dot(p, ap).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r)
        p = r + (rs_new / rs.clamp_min(1e-30)) * p
        rs = rs_new
    return x
