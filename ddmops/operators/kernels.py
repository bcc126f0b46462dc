"""Blur-kernel generators and checks. Every kernel is (K, K), K odd, non-negative, sums to 1."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ddmops.errors import DataError
from ddmops.io import load_array


def gaussian_kernel(size: int, std: tuple[float, float], angle: float = 0.0) -> torch.Tensor:
    """Anisotropic Gaussian with std (along x, along y) rotated by ``angle`` degrees. -> (K, K)"""
    r = (size - 1) / 2
    coords = torch.linspace(-r, r, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    theta = math.radians(angle)
    u = math.cos(theta) * xx + math.sin(theta) * yy
    v = -math.sin(theta) * xx + math.cos(theta) * yy
    k = torch.exp(-0.5 * ((u / std[0]) ** 2 + (v / std[1]) ** 2))
    return (k / k.sum()).float()


def motion_kernel(size: int, intensity: float, generator: torch.Generator) -> torch.Tensor:
    """Random camera-shake kernel -> (K, K).

    A 2-D trajectory is simulated as a random walk with inertia: at each step the
    velocity receives Gaussian jitter, an occasional abrupt turn, and a pull back to
    the start. ``intensity`` in [0, 1] scales jitter and turns. The path is scaled to
    span the kernel, centred on its centre of mass and splatted bilinearly.
    """
    n = 32 * size

    def rand(*shape):
        return torch.rand(shape, generator=generator, dtype=torch.float64)

    jitter = 0.1 + 0.9 * intensity * rand().item()
    turn_rate = 0.02 + 0.1 * intensity * rand().item()
    pull = 0.05 * rand().item()
    angle0 = 2 * math.pi * rand().item()
    vel = torch.tensor([math.cos(angle0), math.sin(angle0)], dtype=torch.float64)
    pos = torch.zeros(2, dtype=torch.float64)
    path = [pos.clone()]
    noise = torch.randn((n, 2), generator=generator, dtype=torch.float64)
    turns, turn_angles = rand(n), rand(n)
    for i in range(n - 1):
        vel = vel + jitter * noise[i] / math.sqrt(size) - pull * pos / size
        if turns[i] < turn_rate:
            a = math.pi * (turn_angles[i].item() - 0.5)
            rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
            vel = rot @ vel
        vel = vel / vel.norm().clamp_min(1e-12)
        pos = pos + vel / 32
        path.append(pos.clone())
    pts = torch.stack(path)
    pts = pts - pts.mean(0)
    span = (pts.max(0).values - pts.min(0).values).max().clamp_min(1e-12)
    limit = (size - 1) / 2 - 1.0  # one pixel of margin for the bilinear footprint
    pts = pts * min(1.0, 2 * limit / span.item()) + (size - 1) / 2
    k = _splat(pts, size)
    return center_kernel(k / k.sum()).float()


def random_sr_kernel(factor: int, generator: torch.Generator, size: int | None = None,
              noise: float = 0.0) -> torch.Tensor:
    """A DIV2KRK-style random anisotropic Gaussian SR kernel (KernelGAN's recipe). -> (K, K)

    Covariance eigenvalues lambda_1, lambda_2 ~ U[0.175 s, 2.5 s] (variances, in pixels^2),
    orientation theta ~ U[0, pi), entries multiplied by (1 + U[-noise, noise]); centred
    and normalised. ``size`` defaults to 6 s + 1 (13 for x2, 25 for x4).
    """
    size = size or 6 * factor + 1
    lam = 0.175 * factor + torch.rand(2, generator=generator, dtype=torch.float64) * (2.5 - 0.175) * factor
    theta = math.pi * torch.rand(1, generator=generator, dtype=torch.float64).item()
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    inv = torch.linalg.inv(rot @ torch.diag(lam) @ rot.T)
    r = (size - 1) / 2
    coords = torch.linspace(-r, r, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    z = torch.stack([xx, yy], -1)
    k = torch.exp(-0.5 * torch.einsum("...i,ij,...j->...", z, inv, z))
    k = k * (1 + noise * (2 * torch.rand(k.shape, generator=generator, dtype=torch.float64) - 1))
    return center_kernel(k / k.sum()).float()


def lens_psf_grid(grid: tuple[int, int], size: int, generator: torch.Generator, sigma: float = 0.8,
                  astigmatism: float = 1.5, coma: float = 0.3) -> torch.Tensor:
    """A space-varying lens PSF field -> (Gy, Gx, K, K) at nodes linspace(0, 1) in y and x.

    At field point d (from the optical centre, |d| = 1 at the middle of an edge) the PSF
    is a Gaussian whose std along the radial direction grows as sigma (1 + astigmatism
    |d|^2) while the tangential one stays near sigma (astigmatism), plus a weaker lobe
    shifted outwards by coma |d|^3 K / 4 pixels (coma). The optical centre is jittered
    slightly (seeded), as for a real, imperfectly centred lens.
    """
    gy, gx = grid
    centre = 0.5 + 0.04 * (2 * torch.rand(2, generator=generator, dtype=torch.float64) - 1)
    r = (size - 1) / 2
    coords = torch.linspace(-r, r, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.zeros(gy, gx, size, size, dtype=torch.float64)
    for i, py in enumerate(torch.linspace(0, 1, gy, dtype=torch.float64)):
        for j, px in enumerate(torch.linspace(0, 1, gx, dtype=torch.float64)):
            d = torch.stack([px - centre[0], py - centre[1]]) * 2
            rad = d.norm().item()
            ux, uy = (d / rad).tolist() if rad > 1e-9 else (1.0, 0.0)
            u = ux * xx + uy * yy  # radial coordinate
            v = -uy * xx + ux * yy  # tangential coordinate
            s_rad, s_tan = sigma * (1 + astigmatism * rad ** 2), sigma * (1 + 0.2 * astigmatism * rad ** 2)
            shift = coma * rad ** 3 * size / 4
            core = torch.exp(-0.5 * ((u / s_rad) ** 2 + (v / s_tan) ** 2))
            lobe = torch.exp(-0.5 * (((u - shift) / (1.5 * s_rad)) ** 2 + (v / (1.5 * s_tan)) ** 2))
            k = core + 0.5 * min(1.0, rad) * lobe
            out[i, j] = center_kernel(k / k.sum())
    return out.float()


def _splat(pts: torch.Tensor, size: int) -> torch.Tensor:
    k = torch.zeros(size, size, dtype=torch.float64)
    x0, y0 = pts[:, 0].floor().long(), pts[:, 1].floor().long()
    fx, fy = pts[:, 0] - x0, pts[:, 1] - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).clamp(0, size - 1), (y0 + dy).clamp(0, size - 1)
        k.index_put_((yi, xi), w, accumulate=True)
    return k


def center_of_mass(k: torch.Tensor) -> torch.Tensor:
    """(..., K, K) -> (..., 2) as (row, col) in pixels."""
    size = k.shape[-1]
    idx = torch.arange(size, dtype=k.dtype, device=k.device)
    mass = k.sum((-1, -2)).clamp_min(1e-12)
    rows = (k.sum(-1) * idx).sum(-1) / mass
    cols = (k.sum(-2) * idx).sum(-1) / mass
    return torch.stack([rows, cols], -1)


def center_kernel(k: torch.Tensor) -> torch.Tensor:
    """Shift a (K, K) kernel by whole pixels so its centre of mass is nearest the centre."""
    c = (k.shape[-1] - 1) / 2
    shift = torch.round(c - center_of_mass(k)).long().tolist()
    out = torch.roll(k, shifts=shift, dims=(0, 1))
    return out if abs(out.sum() - k.sum()) < 1e-9 else k  # never wrap mass around


def resize_kernel(k: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad or centre-crop a (K, K) kernel to (size, size); renormalised."""
    cur = k.shape[-1]
    if size > cur:
        p = (size - cur) // 2
        k = torch.nn.functional.pad(k, (p, p, p, p))
    elif size < cur:
        o = (cur - size) // 2
        k = k[o:o + size, o:o + size]
    return k / k.sum()


def validate_kernel(k: np.ndarray | torch.Tensor, source: str, atol: float = 1e-3) -> torch.Tensor:
    """Check a blur kernel and return it as float32 (K, K); errors name ``source``."""
    k = torch.as_tensor(np.asarray(k) if not isinstance(k, torch.Tensor) else k)
    if k.dim() != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
        raise DataError(f"{source}: a kernel must be square with an odd side (K, K), got shape {tuple(k.shape)}")
    if not torch.isfinite(k).all():
        raise DataError(f"{source}: kernel holds NaN or infinite values")
    if (k < -atol).any():
        raise DataError(f"{source}: kernel has negative entries (min {k.min().item():.3g})")
    total = k.sum().item()
    if abs(total - 1.0) > atol:
        raise DataError(f"{source}: kernel sums to {total:.6g}, expected 1 (within {atol})")
    return k.float().clamp_min(0) / k.float().clamp_min(0).sum()


def validate_psf(array: np.ndarray | torch.Tensor, source: str, atol: float = 1e-3) -> torch.Tensor:
    """A measured PSF (K, K) or PSF grid (Gy, Gx, K, K), each PSF checked as a kernel."""
    t = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if t.dim() == 2:
        return validate_kernel(t, source, atol)
    if t.dim() != 4:
        raise DataError(f"{source}: expected a PSF (K, K) or a PSF grid (Gy, Gx, K, K), got shape {tuple(t.shape)}")
    return torch.stack([validate_kernel(k, f"{source}[{i // t.shape[1]}, {i % t.shape[1]}]", atol)
                        for i, k in enumerate(t.flatten(0, 1))]).reshape(t.shape)


def load_kernel(path: Path, index: int = 0) -> torch.Tensor:
    """Load a kernel from .npy: (K, K), or one of a stack (N, K, K) by ``index``."""
    arr = load_array(path)
    if arr.ndim == 3:
        if not 0 <= index < arr.shape[0]:
            raise DataError(f"{path}: kernel index {index} outside the stack of {arr.shape[0]}")
        arr = arr[index]
    return validate_kernel(arr, str(path))
