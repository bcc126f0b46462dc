"""Super-resolution forward model: blur with a kernel, then keep every s-th pixel."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ddmops.operators.base import Operator


def cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = -0.5, as MATLAB's imresize)."""
    ax = x.abs()
    near = (a + 2) * ax ** 3 - (a + 3) * ax ** 2 + 1
    far = a * ax ** 3 - 5 * a * ax ** 2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


def bicubic_kernel(factor: int) -> torch.Tensor:
    """The (4s, 4s) antialiasing bicubic kernel of downscaling by ``factor`` = s (sums to 1).

    Taps sit at half-integer offsets from the centre of each output pixel, as in imresize.
    """
    pos = (torch.arange(4 * factor, dtype=torch.float64) - (4 * factor - 1) / 2) / factor
    w = cubic(pos)
    k = torch.outer(w, w)
    return (k / k.sum()).float()


class Downsample(Operator):
    """y = (k * x) subsampled by ``factor``. x: (B, C, H, W) -> (B, C, H/s, W/s) for 'reflect'
    (H, W divisible by s); 'valid' keeps only outputs whose kernel support lies inside x.
    The kernel may have even sides (bicubic); convolution is true (flipped) convolution."""

    is_linear = True

    def __init__(self, kernel: torch.Tensor, factor: int, padding: Literal["reflect", "valid"] = "reflect"):
        super().__init__()
        if kernel.dim() != 2 or factor < 1:
            raise ValueError(f"need a (Kh, Kw) kernel and factor >= 1, got {tuple(kernel.shape)}, {factor}")
        self.register_buffer("kernel", kernel)
        self.factor, self.padding = factor, padding

    def A(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        kh, kw = self.kernel.shape
        s = self.factor
        if self.padding == "reflect":
            ph, pw = kh - s, kw - s
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")
        weight = self.kernel.flip(-1, -2).expand(c, 1, kh, kw).to(x.dtype)
        return F.conv2d(x, weight, stride=s, groups=c)

    def input_shape(self, y_shape: torch.Size) -> torch.Size:
        s = self.factor
        if self.padding == "reflect":
            return torch.Size((*y_shape[:-2], y_shape[-2] * s, y_shape[-1] * s))
        kh, kw = self.kernel.shape
        return torch.Size((*y_shape[:-2], (y_shape[-2] - 1) * s + kh, (y_shape[-1] - 1) * s + kw))
