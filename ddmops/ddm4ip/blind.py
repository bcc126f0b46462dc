"""A uniform blur's kernel from the observed set alone: multi-image blind deconvolution, coarse
to fine, as the start of DDM4IP step 2 where no Gaussian describes the blur (camera shake).

Every observed tile shares one kernel k. Each round alternates (Xu et al. 2013, Pan et al. 2014)
(a) a sharp latent per tile, with sparse gradients: min ||k * x - y||^2 + lam ||grad x||_0 by
half-quadratic splitting, solved in Fourier on a reflect-padded field, and (b) the kernel shared
by all tiles: min sum ||valid(grad x * k) - grad y||^2 + gamma ||k||^2 by conjugate gradients,
counting only outputs whose support lies inside the observed tile, then non-negative, small
entries and stray blobs removed, sum 1, centroid centred. Rounds start at about 5 px from a
two-pixel seed, on tiles shrunk to match, and grow by sqrt(2) per scale up to the kernel size.
The power spectrum (:mod:`ddmops.ddm4ip.spectral`) fixes a blur only up to its phase; edges fix
the phase.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ddmops.operators.kernels import center_of_mass

LAM = 4e-3  # L0 weight on [0, 1] images: from LAM at each scale, decayed by 0.9 per round down to LAM_MIN
LAM_MIN = 1e-4
GAMMA = 1e-3  # kernel ridge, per 1000 gradient samples
ROUNDS = 6  # latent / kernel rounds per scale
FLOOR = 0.03  # kernel entries under this fraction of the peak are dropped
BLOB = 0.1  # connected parts of the kernel with less than this fraction of the largest's mass are dropped


def gray_tiles(images: list[torch.Tensor], side: int, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Non-overlapping ``side`` px tiles of images (C, H, W) in [-1, 1], as luminance in [0, 1],
    at most ``limit`` of them (a random choice). -> (N, side, side) float64"""
    out = []
    for img in images:
        g = (img.double().mean(0) + 1) / 2
        h, w = g.shape
        out += [g[i:i + side, j:j + side] for i in range(0, h - side + 1, side) for j in range(0, w - side + 1, side)]
    if not out:
        raise ValueError(f"blind kernel start: no observed image holds a {side} px tile")
    if len(out) > limit:
        out = [out[i] for i in torch.randperm(len(out), generator=generator)[:limit].tolist()]
    return torch.stack(out)


def _otf(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Transfer function of a centred kernel (K, K) on a periodic size x size field."""
    k = kernel.shape[-1]
    z = kernel.new_zeros(size, size)
    z[:k, :k] = kernel
    return torch.fft.fft2(torch.roll(z, (-(k // 2), -(k // 2)), (0, 1)))


def _forward_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.roll(x, -1, -1) - x, torch.roll(x, -1, -2) - x


def sharp_latent(y: torch.Tensor, kernel: torch.Tensor, lam: float, beta_max: float = 1e5) -> torch.Tensor:
    """Latent tiles with sparse gradients under the blur ``kernel`` (K, K): y (N, H, H) ->
    x (N, H + K - 1, H + K - 1), such that valid(k * x) ~ y."""
    k = kernel.shape[-1]
    yp = F.pad(y[:, None], [k] * 4, mode="reflect")[:, 0]
    m = yp.shape[-1]
    kf = _otf(kernel, m)
    dx = _otf(y.new_tensor([[0, 0, 0], [1, -1, 0], [0, 0, 0]]), m)  # the transfer functions of _forward_differences
    dy = _otf(y.new_tensor([[0, 1, 0], [0, -1, 0], [0, 0, 0]]), m)
    data, ksq, dsq = kf.conj() * torch.fft.fft2(yp), kf.abs() ** 2, dx.abs() ** 2 + dy.abs() ** 2
    x, beta = yp, 2 * lam
    while beta < beta_max:
        gx, gy = _forward_differences(x)
        keep = (gx ** 2 + gy ** 2) >= lam / beta  # the L0 step: small gradients become zero
        num = data + beta * (dx.conj() * torch.fft.fft2(gx * keep) + dy.conj() * torch.fft.fft2(gy * keep))
        x = torch.fft.ifft2(num / (ksq + beta * dsq)).real
        beta *= 2
    start, side = k - (k - 1) // 2, y.shape[-1] + k - 1
    return x[:, start:start + side, start:start + side]


def _gradients(x: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical differences inside each tile (N, S, S) -> (2N, S-1, S-1)."""
    return torch.cat([x[:, :-1, 1:] - x[:, :-1, :-1], x[:, 1:, :-1] - x[:, :-1, :-1]])


def kernel_step(x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, gamma: float = GAMMA,
                iters: int = 40) -> torch.Tensor:
    """The ridge least-squares kernel (K, K) taking the latent's gradients to the observed ones:
    x (N, H + K - 1, ...), y (N, H, H); conjugate gradients from ``start``."""
    k = start.shape[-1]
    gx, gy = _gradients(x), _gradients(y)
    side, h = gx.shape[-1], gy.shape[-1]
    fx = torch.fft.rfft2(gx)
    margin = (k - 1) // 2  # outputs reaching the latent's padded border are left out
    mask = torch.zeros(h, h, dtype=x.dtype)
    mask[margin:h - margin, margin:h - margin] = 1
    scale = mask.sum() * gy.shape[0] / 1e3

    def forward(kern):
        kp = kern.new_zeros(side, side)
        kp[:k, :k] = kern
        return torch.fft.irfft2(fx * torch.fft.rfft2(kp), s=(side, side))[:, k - 1:k - 1 + h, k - 1:k - 1 + h] * mask

    def adjoint(r):
        rp = r.new_zeros(r.shape[0], side, side)
        rp[:, k - 1:k - 1 + h, k - 1:k - 1 + h] = r * mask
        return torch.fft.irfft2((fx.conj() * torch.fft.rfft2(rp)).sum(0), s=(side, side))[:k, :k]

    def normal(kern):
        return adjoint(forward(kern)) / scale + gamma * kern

    kern = start.clone()
    r = adjoint(gy) / scale - normal(kern)
    p, rs = r.clone(), (r * r).sum()
    for _ in range(iters):
        q = normal(p)
        a = rs / (p * q).sum()
        kern, r = kern + a * p, r - a * q
        rs_new = (r * r).sum()
        p, rs = r + rs_new / rs * p, rs_new
    return kern


def clean_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Non-negative, entries under FLOOR x peak and blobs of little mass removed, centroid moved
    to the centre (whole pixels), sum 1."""
    k = kernel.clamp_min(0)
    k = torch.where(k < FLOOR * k.max(), torch.zeros_like(k), k)
    labels, n = ndimage.label(k.numpy() > 0, structure=np.ones((3, 3)))
    if n > 1:
        mass = ndimage.sum(k.numpy(), labels, range(1, n + 1))
        k = k * torch.from_numpy(np.isin(labels, 1 + np.flatnonzero(mass >= BLOB * mass.max())))
    size = k.shape[-1]
    shift = torch.round((size - 1) / 2 - center_of_mass(k)).long().tolist()
    # padded, not wrapped: mass moved past the border is dropped (operators.kernels.center_kernel would not move it)
    k = torch.roll(F.pad(k, [size] * 4), shift, (0, 1))[size:2 * size, size:2 * size]
    return k / k.sum()


def scales(size: int) -> list[int]:
    """Odd kernel sizes from about 5 up to ``size``, growing by sqrt(2)."""
    out = [size]
    while out[-1] > 5:
        s = int(round(out[-1] / math.sqrt(2)))
        out.append(max(3, s + (s + 1) % 2))
    return out[::-1]


def blind_kernel(y: torch.Tensor, size: int, lam: float = LAM, rounds: int = ROUNDS,
                 on_scale=None) -> torch.Tensor:
    """The blur kernel (size, size) shared by observed tiles y (N, H, H) in [0, 1].
    ``on_scale(k)`` sees each scale's estimate."""
    kern = None
    for k in scales(size):
        side = max(8, round(y.shape[-1] * k / size))
        ys = y if side == y.shape[-1] else F.interpolate(
            y[:, None], size=(side, side), mode="bilinear", antialias=True)[:, 0]
        if kern is None:
            kern = y.new_zeros(k, k)
            kern[k // 2, k // 2 - 1:k // 2 + 1] = 0.5
        else:
            kern = F.interpolate(kern[None, None], size=(k, k), mode="bilinear", align_corners=True)[0, 0]
            kern = kern.clamp_min(0) / kern.clamp_min(0).sum()
        weight = lam
        for _ in range(rounds):
            kern = clean_kernel(kernel_step(sharp_latent(ys, kern, weight), ys, kern))
            weight = max(0.9 * weight, LAM_MIN)
        if on_scale is not None:
            on_scale(kern)
    return kern
