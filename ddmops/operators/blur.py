"""Uniform blur: one kernel applied to every channel by true (flipped) convolution.

Kernels with a side of at least ``FFT_MIN_SIDE`` are applied by FFT, cheaper there than
direct (depthwise) convolution (measured on CPU by benchmarks/conv_speed.py).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ddmops.operators.base import Operator

Padding = Literal["valid", "reflect", "circular"]
FFT_MIN_SIDE = 11


def convolve(x: torch.Tensor, kernel: torch.Tensor, padding: Padding = "valid") -> torch.Tensor:
    """Convolve each channel of ``x`` with ``kernel``.

    x: (B, C, H, W); kernel: (K, K), (B, K, K) or (B, 1, K, K) for one kernel per image.
    'valid' returns (B, C, H-K+1, W-K+1); 'reflect' and 'circular' keep (H, W).
    """
    ksize = kernel.shape[-1]
    if padding != "valid":
        p = ksize // 2
        x = F.pad(x, (p, p, p, p), mode=padding)
    if kernel.dim() > 2:
        kernel = kernel.reshape(x.shape[0], 1, ksize, ksize)
    return (_fft_valid if ksize >= FFT_MIN_SIDE else _direct_valid)(x, kernel)


def _direct_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """'valid' convolution by depthwise conv2d. x: (B, C, H, W); kernel: (K, K) or (B, 1, K, K)."""
    b, c = x.shape[:2]
    ksize = kernel.shape[-1]
    k = kernel.flip(-1, -2).to(x.dtype)
    if k.dim() == 2:
        return F.conv2d(x, k.expand(c, 1, ksize, ksize), groups=c)
    # one kernel per image: fold the batch into channels
    out = F.conv2d(x.reshape(1, b * c, *x.shape[-2:]), k.repeat_interleave(c, dim=0), groups=b * c)
    return out.reshape(b, c, *out.shape[-2:])


def _fft_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """'valid' convolution by FFT. x: (B, C, H, W); kernel: (K, K) or (B, 1, K, K).

    Circular convolution on a grid at least x's size wraps around only in the first K-1 rows
    and columns, exactly those that 'valid' drops, so the rest equals direct convolution."""
    h, w = x.shape[-2:]
    cut = kernel.shape[-1] - 1
    size = (_fft_size(h), _fft_size(w))  # zero-padding x to a fast size wraps nothing more
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()  # no half-precision FFTs
    kf = torch.fft.rfft2(kernel.to(work.dtype), s=size)
    out = torch.fft.irfft2(torch.fft.rfft2(work, s=size) * kf, s=size)[..., cut:h, cut:w]
    return out.to(x.dtype)


def _fft_size(n: int) -> int:
    """The smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


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
        grow = self.kernel.shape[-1] - 1  # full correlation: zero-pad, convolve with the flipped kernel
        return convolve(F.pad(y, (grow, grow, grow, grow)), self.kernel.flip(-1, -2), "valid")

    def input_shape(self, y_shape: torch.Size) -> torch.Size:
        if self.padding != "valid":
            return y_shape
        grow = self.kernel.shape[-1] - 1
        return torch.Size((*y_shape[:-2], y_shape[-2] + grow, y_shape[-1] + grow))
