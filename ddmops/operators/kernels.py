"""Blur-kernel generators and checks. Every kernel is (K, K), K odd, non-negative, sums to 1."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ddmops.errors import DataError


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


def load_kernel(path: Path, index: int = 0) -> torch.Tensor:
    """Load a kernel from .npy: (K, K), or one of a stack (N, K, K) by ``index``."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: kernel file not found") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy kernel ({exc})") from None
    if arr.ndim == 3:
        if not 0 <= index < arr.shape[0]:
            raise DataError(f"{path}: kernel index {index} outside the stack of {arr.shape[0]}")
        arr = arr[index]
    return validate_kernel(arr, str(path))
