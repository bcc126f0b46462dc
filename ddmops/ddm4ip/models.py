"""Learnable forward models of DDM4IP step 2, one per operator family.

Each maps clean crops x (B, C, S, S) (and their field positions (B, 2, S, S) where the
family needs them) to noise-free observations of the degraded prior's patch size P,
with S = ``crop_size(P)``; ``kernels()`` gives the PSFs the regularisers act on and
``operator_of(psfs)`` the typed operator of a PSF stack (the learner's moving average).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ddmops.config import LearnOperatorConfig
from ddmops.operators.blur import convolve
from ddmops.operators.kernels import gaussian_kernel
from ddmops.operators.psf_grid import psf_at
from ddmops.operators.psf_operator import BlurKernel, PsfGridKernels, PsfOperator, SrKernel


def _init_kernel(size: int, init: str, generator: torch.Generator) -> torch.Tensor:
    if init == "gaussian":  # broad and centred: no corner mass to shed
        k = gaussian_kernel(size, (size / 4, size / 4))
    elif init == "uniform":
        k = torch.full((size, size), 1.0 / size ** 2)
    elif init == "random":
        k = torch.randn(size, size, generator=generator).abs()
    else:
        raise ValueError(f"unknown kernel init {init!r}")
    return k / k.sum()


class KernelModel(torch.nn.Module):
    """Uniform blur. 'abs' (DDM4IP): k = |raw| / sum|raw|; 'softmax': k = softmax(raw), so a
    step changes entries by relative amounts and small tails shrink geometrically."""

    family = BlurKernel.family
    needs_position = False
    factor, grid_shape = 1, (1, 1)

    def __init__(self, size: int, init: str, generator: torch.Generator, param: str = "abs"):
        super().__init__()
        if param not in ("abs", "softmax"):
            raise ValueError(f"unknown kernel parametrisation {param!r}")
        self.param, self.size = param, size
        k = _init_kernel(size, init, generator)
        self.raw = torch.nn.Parameter(k.clamp_min(1e-8).log() if param == "softmax" else k)

    def unnormalised(self) -> torch.Tensor:
        return (self.raw.abs() if self.param == "abs" else self.raw.exp())[None]

    def kernels(self) -> torch.Tensor:
        """(1, K, K), non-negative, sums to 1."""
        if self.param == "softmax":
            return torch.softmax(self.raw.flatten(), 0).reshape(1, *self.raw.shape)
        k = self.raw.abs()
        return (k / k.sum().clamp_min(1e-12))[None]

    def forward(self, x: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        return convolve(x, self.kernels()[0], "valid")

    def crop_size(self, patch: int) -> int:
        return patch + self.size - 1

    def operator_of(self, psfs: torch.Tensor) -> PsfOperator:
        return BlurKernel.from_psfs(psfs)

    @torch.no_grad()
    def set_psfs(self, psfs: torch.Tensor) -> None:
        """Start from PSFs (1, K, K) (non-negative, summing to 1)."""
        k = psfs[0].to(self.raw)
        self.raw.copy_(k.clamp_min(1e-8).log() if self.param == "softmax" else k)


class PsfGridModel(torch.nn.Module):
    """A (Gy, Gx, K, K) grid of PSFs; a crop is blurred with the PSF interpolated at its
    centre (|.|, normalised), as DDM4IP's per-patch model."""

    family = PsfGridKernels.family
    needs_position = True
    factor = 1

    def __init__(self, grid: tuple[int, int], size: int, init: str, generator: torch.Generator):
        super().__init__()
        self.size, self.grid_shape = size, tuple(grid)
        k = _init_kernel(size, init, generator)
        self.raw = torch.nn.Parameter(k.expand(*grid, size, size).clone())

    def unnormalised(self) -> torch.Tensor:
        return self.raw.abs().flatten(0, 1)

    def kernels(self) -> torch.Tensor:
        """(Gy * Gx, K, K) node PSFs, non-negative, each summing to 1."""
        k = self.unnormalised()
        return k / k.sum((-1, -2), keepdim=True).clamp_min(1e-12)

    def forward(self, x: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        if position is None:
            raise ValueError("the psf_grid model needs the crops' field positions (B, 2, H, W)")
        centre = position.flatten(2).mean(-1)
        return convolve(x, psf_at(self.raw, centre, normalise=True), "valid")

    def crop_size(self, patch: int) -> int:
        return patch + self.size - 1

    def operator_of(self, psfs: torch.Tensor) -> PsfOperator:
        return PsfGridKernels.from_psfs(psfs, grid=self.grid_shape)

    @torch.no_grad()
    def set_psfs(self, psfs: torch.Tensor) -> None:
        """Start from node PSFs (Gy * Gx, K, K), row by row."""
        self.raw.copy_(psfs.reshape(self.raw.shape).to(self.raw))


class SrKernelModel(torch.nn.Module):
    """KernelGAN's deep linear generator: bias-free convolutions applied to each channel,
    the last with stride ``factor``. Its effective kernel (the response to a delta, of
    side sum(k_i - 1) + 1) defines the downsampling y = (k * x) subsampled by s."""

    family = SrKernel.family
    needs_position = False
    grid_shape = (1, 1)

    def __init__(self, factor: int, generator: torch.Generator, struct: tuple[int, ...] = (7, 5, 3, 1, 1, 1),
                 channels: int = 64, init: str = "gaussian"):
        super().__init__()
        self.factor = factor
        self.size = sum(k - 1 for k in struct) + 1
        sizes = [1] + [channels] * (len(struct) - 1) + [1]
        self.layers = torch.nn.ParameterList()
        for i, k in enumerate(struct):
            w = torch.zeros(sizes[i + 1], sizes[i], k, k)
            w[0, 0, k // 2, k // 2] = 1.0  # a chain through channel 0 ...
            if i == 0 and init == "gaussian":  # ... whose first filter is a smooth blob
                w[0, 0] = gaussian_kernel(k, (0.5 * factor, 0.5 * factor))
            w += 1e-3 * torch.randn(w.shape, generator=generator)  # ... plus noise to break symmetry
            self.layers.append(torch.nn.Parameter(w))

    def _run(self, z: torch.Tensor, stride_last: int) -> torch.Tensor:
        for i, w in enumerate(self.layers):
            z = F.conv2d(z, w, stride=stride_last if i == len(self.layers) - 1 else 1)
        return z

    def effective_kernel(self) -> torch.Tensor:
        """(K, K): the network's response to a delta (our flipped-convolution convention)."""
        delta = torch.zeros(1, 1, 2 * self.size - 1, 2 * self.size - 1, device=self.layers[0].device,
                            dtype=self.layers[0].dtype)
        delta[0, 0, self.size - 1, self.size - 1] = 1.0
        return self._run(delta, 1)[0, 0]

    def unnormalised(self) -> torch.Tensor:
        return self.effective_kernel()[None]

    kernels = unnormalised  # the sum-to-one regulariser keeps it normalised

    def forward(self, x: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        b, c = x.shape[:2]
        out = self._run(x.reshape(b * c, 1, *x.shape[-2:]), self.factor)
        return out.reshape(b, c, *out.shape[-2:])

    def crop_size(self, patch: int) -> int:
        return (patch - 1) * self.factor + self.size

    def operator_of(self, psfs: torch.Tensor) -> PsfOperator:
        """The SR kernel's sum is only pulled towards 1 while learning (KernelGAN); here it is
        clipped at 0 and scaled to sum 1."""
        return SrKernel.from_psfs(psfs, factor=self.factor)

    def set_psfs(self, psfs: torch.Tensor, steps: int = 500) -> None:
        """Start from an effective kernel (1, K, K): the layers are fitted to it by least squares."""
        target = psfs[0].to(self.layers[0])
        opt = torch.optim.Adam(self.layers.parameters(), lr=1e-3)
        for _ in range(steps):
            loss = (self.effective_kernel() - target).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


LearnableOperator = KernelModel | PsfGridModel | SrKernelModel

MODELS: dict[str, Callable[[LearnOperatorConfig, torch.Generator], LearnableOperator]] = {
    "deblur": lambda cfg, g: KernelModel(cfg.kernel_size, _start(cfg.init), g, cfg.param),
    "psf_grid": lambda cfg, g: PsfGridModel(cfg.grid, cfg.kernel_size, _start(cfg.init), g),
    "sr_kernel": lambda cfg, g: SrKernelModel(cfg.factor, g, cfg.sr_struct, cfg.sr_channels, "gaussian"),
}


def _start(init: str) -> str:
    return "gaussian" if init in ("spectral", "blind", "auto") else init  # their PSFs come later (set_psfs)


def build_model(task: str, cfg: LearnOperatorConfig, generator: torch.Generator) -> LearnableOperator:
    """The learnable forward model of DDM4IP task ``task`` (for init 'spectral', 'blind', 'auto': a broad
    Gaussian until :meth:`set_psfs` gives it the estimate)."""
    return MODELS[task](cfg, generator)
