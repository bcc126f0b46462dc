"""Space-varying blur from a grid of PSFs (lens calibration).

A grid (Gy, Gx, K, K) holds PSFs at the field positions x = linspace(0, 1, Gx),
y = linspace(0, 1, Gy) (normalised image coordinates, (0, 0) the top-left corner).
The PSF anywhere in the field is the bilinear interpolation of the four surrounding
nodes. Since convolution is linear in the kernel, blurring every pixel with its own
interpolated PSF equals blending the node blurs with the bilinear weights of the pixel:

    y(p) = sum_g w_g(p) (k_g * x)(p)

which is exact per-pixel interpolation without seams; ``mode='center'`` instead uses one
PSF per image, the one at the centre of its position map (DDM4IP's per-patch model).
"""

from __future__ import annotations

from typing import Literal

import torch

from ddmops.operators.base import Operator
from ddmops.operators.blur import convolve


def position_map(h: int, w: int, top: float = 0.0, left: float = 0.0, full_h: float | None = None,
                 full_w: float | None = None) -> torch.Tensor:
    """(2, h, w) normalised (x, y) of the pixel centres of a crop at (top, left) of a
    full image of size (full_h, full_w) (default: the crop is the full image)."""
    full_h, full_w = full_h or h, full_w or w
    ys = (top + torch.arange(h, dtype=torch.float64) + 0.5) / full_h
    xs = (left + torch.arange(w, dtype=torch.float64) + 0.5) / full_w
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)]).float()


def bilinear_weights(pos: torch.Tensor, grid_shape: tuple[int, int]) -> torch.Tensor:
    """Hat-function weights of each node. pos: (..., 2) as (x, y) in [0, 1] -> (..., Gy * Gx)."""
    gy, gx = grid_shape
    x = pos[..., 0].clamp(0, 1) * max(gx - 1, 1)
    y = pos[..., 1].clamp(0, 1) * max(gy - 1, 1)
    wx = (1 - (x[..., None] - torch.arange(gx, device=pos.device, dtype=pos.dtype)).abs()).clamp_min(0)
    wy = (1 - (y[..., None] - torch.arange(gy, device=pos.device, dtype=pos.dtype)).abs()).clamp_min(0)
    if gx == 1:
        wx = torch.ones_like(wx)
    if gy == 1:
        wy = torch.ones_like(wy)
    return (wy[..., :, None] * wx[..., None, :]).flatten(-2)


def psf_at(grid: torch.Tensor, pos: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """PSFs at positions. grid: (Gy, Gx, K, K); pos: (N, 2) (x, y) -> (N, K, K).

    Exact at nodes and linear between them; ``normalise`` takes |.| and rescales to sum 1
    (for learned grids whose entries may have drifted)."""
    w = bilinear_weights(pos.to(grid.dtype), grid.shape[:2])
    k = torch.einsum("ng,gij->nij", w, grid.flatten(0, 1))
    if normalise:
        k = k.abs()
        k = k / k.sum((-1, -2), keepdim=True).clamp_min(1e-12)
    return k


class PsfGrid(Operator):
    """Space-varying blur of images x (B, C, H, W) whose pixels sit at ``position`` (B, 2, H, W).

    'valid' padding: y is (B, C, H-K+1, W-K+1) and output pixel p takes the PSF of its own
    position (the centre of its input window).
    """

    is_linear = True

    def __init__(self, grid: torch.Tensor, position: torch.Tensor, mode: Literal["pixel", "center"] = "pixel"):
        super().__init__()
        if grid.dim() != 4 or grid.shape[-1] != grid.shape[-2] or grid.shape[-1] % 2 == 0:
            raise ValueError(f"PSF grid must be (Gy, Gx, K, K) with K odd, got {tuple(grid.shape)}")
        self.register_buffer("grid", grid)
        self.register_buffer("position", position)
        self.mode = mode

    def output_position(self) -> torch.Tensor:
        """(B, 2, H-K+1, W-K+1): positions of the output pixels."""
        r = self.grid.shape[-1] // 2
        return self.position[..., r:self.position.shape[-2] - r, r:self.position.shape[-1] - r]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "center":
            centre = self.position.flatten(2).mean(-1)  # (B, 2)
            return convolve(x, psf_at(self.grid, centre), "valid")
        pos = self.output_position().movedim(1, -1)  # (B, h, w, 2)
        w = bilinear_weights(pos.to(x.dtype), self.grid.shape[:2])  # (B, h, w, G)
        active = (w.flatten(0, 2).sum(0) > 0).nonzero().flatten().tolist()
        kernels = self.grid.flatten(0, 1).to(x.dtype)
        out = 0.0
        for g in active:
            out = out + w[..., g][:, None] * convolve(x, kernels[g], "valid")
        return out

    def batch(self, index: slice) -> "PsfGrid":
        return PsfGrid(self.grid, self.position[index], self.mode)

    def input_shape(self, y_shape: torch.Size) -> torch.Size:
        grow = self.grid.shape[-1] - 1
        return torch.Size((*y_shape[:-2], y_shape[-2] + grow, y_shape[-1] + grow))
