"""PSF grids in plain numpy: node positions and bilinear interpolation between node PSFs.

A grid is ``(Gy, Gx, K, K)``: PSF ``grid[i, j]`` sits at the normalised field position
``(x, y) = (j / (Gx - 1), i / (Gy - 1))`` (``linspace(0, 1)`` on each axis; 0 on an axis of
one node), x running left to right and y top to bottom.
"""

from __future__ import annotations

import numpy as np

SNAP = 1e-9  # positions this close to a node count as on it (0.3 * 10 is not exactly 3)


def grid_nodes(n: int) -> np.ndarray:
    """Node positions of an axis of ``n`` nodes: linspace(0, 1, n). -> (n,)"""
    return np.linspace(0.0, 1.0, n)


def hat_weights(n: int, t: np.ndarray) -> np.ndarray:
    """Bilinear (hat) weights of ``n`` nodes at positions ``t`` in [0, 1]: (P,) -> (n, P).

    Each column sums to 1; at a node it is exactly one-hot.
    """
    t = np.asarray(t, dtype=np.float64)
    if n == 1:
        return np.ones((1, t.size))
    u = t.reshape(-1) * (n - 1)
    nearest = np.round(u)
    u = np.where(np.abs(u - nearest) < SNAP, nearest, u)
    return np.maximum(0.0, 1.0 - np.abs(u[None, :] - np.arange(n)[:, None]))


def psf_at(grid: np.ndarray, x: float, y: float) -> np.ndarray:
    """PSF at field position (x, y) in [0, 1]^2: the bilinear blend of the four surrounding
    node PSFs, clipped at 0 and renormalised to sum 1. (Gy, Gx, K, K) -> (K, K), grid's dtype.

    Exact (equal arrays) at the nodes; linear in x and y between them for valid node PSFs.
    """
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"field position ({x}, {y}) lies outside [0, 1]^2")
    gy, gx = grid.shape[:2]
    wy, wx = hat_weights(gy, [y])[:, 0], hat_weights(gx, [x])[:, 0]
    iy, ix = np.flatnonzero(wy), np.flatnonzero(wx)  # at most two nodes per axis
    psf = np.einsum("i,j,ijkl->kl", wy[iy], wx[ix], grid[np.ix_(iy, ix)].astype(np.float64))
    psf = np.clip(psf, 0.0, None)
    total = psf.sum()
    return (psf / total if total > 0 else psf).astype(grid.dtype)
