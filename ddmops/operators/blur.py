"""Uniform blur: one kernel applied to every channel by true (flipped) convolution."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ddmops.operators.base import Operator

Padding = Literal["valid", "reflect", "circular"]


def convolve(x: torch.Tensor, kernel: torch.Tensor, padding: Padding = "valid") -> torch.Tensor:
    """Convolve each channel of ``x`` with ``kernel``.

    x: (B, C, H, W); kernel: (K, K), (B, K, K) or (B, 1, K, K) for one kernel per image.
    'valid' returns (B, C, H-K+1, W-K+1); 'reflect' and 'circular' keep (H, W).
    """
    b, c, h, w = x.shape
    k = kernel.flip(-1, -2)
    ksize = k.shape[-1]
    if padding != "valid":
        p = ksize // 2
        x = F.pad(x, (p, p, p, p), mode=padding)
    if k.dim() == 2:
        weight = k.expand(c, 1, ksize, ksize)
        return F.conv2d(x, weight.to(x.dtype), groups=c)
    # one kernel per image: fold the batch into channels
    k = k.reshape(b, 1, ksize, ksize).repeat_interleave(c, dim=0)
    out = F.conv2d(x.reshape(1, b * c, *x.shape[-2:]), k.to(x.dtype), groups=b * c)
    return out.reshape(b, c, *out.shape[-2:])


class Blur(Operator):
    """y = k * x with ``kernel`` (K, K), K odd; see :func:`convolve` for shapes."""

    is_linear = True

    def __init__(self, kernel: torch.Tensor, padding: Padding = "valid"):
        super().__init__()
        if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise ValueError(f"blur kernel must be square with an odd side, got shape {tuple(kernel.shape)}")
        self.register_buffer("kernel", kernel)
        self.padding = padding

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(x, self.kernel, self.padding)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self.padding != "valid":
            return super().A_adjoint(y)
        c = y.shape[1]
        k = self.kernel.flip(-1, -2).expand(c, 1, *self.kernel.shape).to(y.dtype)
        return F.conv_transpose2d(y, k, groups=c)

    def input_shape(self, y_shape: torch.Size) -> torch.Size:
        if self.padding != "valid":
            return y_shape
        grow = self.kernel.shape[-1] - 1
        return torch.Size((*y_shape[:-2], y_shape[-2] + grow, y_shape[-1] + grow))
