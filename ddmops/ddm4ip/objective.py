"""The distribution-matching loss of DDM4IP (Diff-Instruct on observations) and kernel regularisers."""

from __future__ import annotations

from typing import Callable

import torch

from ddmops.config import KernelRegConfig
from ddmops.ddm4ip.spectral import SpectralTarget, spectral_loss
from ddmops.flow import path as fpath
from ddmops.operators.kernels import center_of_mass

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def distribution_matching_loss(y: torch.Tensor, v_aux: Velocity, v_pre: Velocity,
                               generator: torch.Generator) -> torch.Tensor:
    """mean(stopgrad[v_aux(y_t, t) - v_pre(y_t, t)] * y), y_t = (1 - t) eps + t y.

    y: (B, C, H, W) simulated observations carrying the operator's gradient. The
    velocity difference points from the observed distribution (v_pre, trained on real
    degraded data) to the simulated one (v_aux), so descending moves y towards the data.
    As in the DDM4IP code, the difference multiplies y, the data end of the path.
    """
    eps = torch.randn(y.shape, generator=generator, device=generator.device).to(y)
    t = fpath.sample_t(y.shape[0], generator).to(y)
    y_t = fpath.interpolate(y.detach(), eps, t)
    with torch.no_grad():
        diff = v_aux(y_t, t) - v_pre(y_t, t)
    return torch.mean(diff * y)


def kernel_regularisers(kernel: torch.Tensor, raw: torch.Tensor, reg: KernelRegConfig,
                        spectral: SpectralTarget | None = None) -> dict[str, torch.Tensor]:
    """Weighted penalties on normalised kernels (N, K, K) and their raw parameter.

    sparse: mean |k|^p (p < 1 shrinks small entries; with sum(k) = 1, p = 1 is constant);
    center: squared pixel distance of the centre of mass from the kernel centre;
    gaussian: spread of the mass around its centre of mass (coordinates in [-1, 1]);
    sum_to_one: |sum(raw) - 1|;
    spectral: the kernels' misfit to the second-order statistics of the unpaired sets
    (:func:`ddmops.ddm4ip.spectral.spectral_loss`; needs ``spectral``).
    """
    terms: dict[str, torch.Tensor] = {}
    size = kernel.shape[-1]
    if reg.sparse > 0:
        terms["sparse"] = reg.sparse * (kernel.abs() + 1e-12).pow(reg.sparse_p).mean()
    if reg.center > 0:
        c = (size - 1) / 2
        terms["center"] = reg.center * ((center_of_mass(kernel) - c) ** 2).sum(-1).mean()
    if reg.gaussian > 0:
        coords = torch.linspace(-1, 1, size, device=kernel.device, dtype=kernel.dtype)
        com = (center_of_mass(kernel) - (size - 1) / 2) * (2 / max(size - 1, 1))
        dy = (coords[:, None] - com[..., 0, None, None]) ** 2
        dx = (coords[None, :] - com[..., 1, None, None]) ** 2
        terms["gaussian"] = reg.gaussian * ((dy + dx) * kernel).sum((-1, -2)).mean()
    if reg.sum_to_one > 0:
        terms["sum_to_one"] = reg.sum_to_one * (raw.sum((-1, -2)) - 1).abs().mean()
    if reg.spectral > 0:
        if spectral is None:
            raise ValueError("reg.spectral needs the sets' spectra (spectral_target)")
        terms["spectral"] = reg.spectral * spectral_loss(kernel, spectral)
    return terms
