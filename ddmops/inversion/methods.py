"""DDM4IP step 3 by name: what stage `invert` runs and `ddmops restore` offers.

- ``pnp`` (default): half-quadratic splitting with the clean flow prior as denoiser (DPIR's
  schedule, deterministic: a posterior-mean estimate, the best PSNR of the three);
- ``pnp-bm3d``: the same with BM3D as denoiser (no learned prior; the bar the prior must clear);
- ``diffpir``: DiffPIR's stochastic sampler with the clean flow prior;
- ``dcdp-ode``, ``dcdp-tweedie``, ``dps``: the restoration tasks' methods (DCDP with either
  purification, DPS), with the settings of ``invert.<task>.dcdp`` / ``.dps``.
"""

from __future__ import annotations

import torch

from ddmops.config import InvertConfig
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.dcdp import dcdp
from ddmops.inversion.diffpir import diffpir
from ddmops.inversion.dps import dps
from ddmops.inversion.pnp import bm3d_denoiser, flow_denoiser, hqs
from ddmops.operators.base import Operator


def invert(cfg: InvertConfig, y: torch.Tensor, op: Operator, prior: FlowPrior, *, sigma: float,
           generator: torch.Generator) -> torch.Tensor:
    """Restore x from y = A(x) + noise of std ``sigma`` with ``cfg.method``.
    y: (B, C, h, w) -> x: op.input_shape(y.shape) in [-1, 1]."""
    if cfg.method == "diffpir":
        return diffpir(y, op, prior, cfg.diffpir, sigma_n=sigma, generator=generator)
    if cfg.method == "dps":
        return dps(y, op, prior, cfg.dps, x_shape=op.input_shape(y.shape), generator=generator)
    if cfg.method.startswith("dcdp-"):
        return dcdp(y, op, prior, cfg.dcdp, mode=cfg.method.removeprefix("dcdp-"), generator=generator).x
    denoise = bm3d_denoiser() if cfg.method == "pnp-bm3d" else flow_denoiser(prior)
    return hqs(y, op, denoise, cfg.pnp, sigma=sigma).clamp(-1, 1)
