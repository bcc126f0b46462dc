"""Inpainting: y = m * x with a binary mask m (1 = observed)."""

from __future__ import annotations

import torch

from ddmops.operators.base import Operator


def box_mask(h: int, w: int, box: tuple[int, int], generator: torch.Generator, margin: int = 0) -> torch.Tensor:
    """(1, H, W) mask with one missing box of size ``box`` at a random place ``margin`` px from the border."""
    bh, bw = box
    if bh > h - 2 * margin or bw > w - 2 * margin:
        raise ValueError(f"box {box} does not fit in {h}x{w} with margin {margin}")
    top = margin + int(torch.randint(0, h - 2 * margin - bh + 1, (1,), generator=generator))
    left = margin + int(torch.randint(0, w - 2 * margin - bw + 1, (1,), generator=generator))
    m = torch.ones(1, h, w)
    m[:, top:top + bh, left:left + bw] = 0
    return m


def random_mask(h: int, w: int, missing: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """(1, H, W) mask missing each pixel with a probability drawn once from U(missing)."""
    lo, hi = missing
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"missing-pixel probability range must satisfy 0 <= low <= high <= 1, got {missing}")
    p = lo + (hi - lo) * torch.rand(1, generator=generator).item()
    return (torch.rand(1, h, w, generator=generator) >= p).float()


class Inpaint(Operator):
    """y = mask * x; mask (1 or C, H, W) or (B, 1 or C, H, W) in {0, 1}; self-adjoint."""

    is_linear = True

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask.to(y)

    def batch(self, index: slice) -> "Inpaint":
        return Inpaint(self.mask[index]) if self.mask.dim() == 4 else self
