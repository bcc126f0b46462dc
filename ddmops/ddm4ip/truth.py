"""The synthetic forward models of the DDM4IP tasks: what `degrade` applies and what the
learned operators are scored against (seeded, or read from a PSF file)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ddmops.config import DegradeConfig
from ddmops.data import make_kernel, resolve_path
from ddmops.io import load_array
from ddmops.operators.kernels import lens_psf_grid, load_kernel, random_sr_kernel, validate_psf
from ddmops.operators.psf_operator import BlurKernel, PsfGridKernels, PsfOperator, SrKernel


def _blur(cfg: DegradeConfig, root: Path) -> PsfOperator:
    return BlurKernel(make_kernel(cfg.deblur, root).numpy())


def _psf_grid(cfg: DegradeConfig, root: Path) -> PsfOperator:
    spec = cfg.psf_grid
    if spec.path:
        path = resolve_path(spec.path, root)
        return PsfGridKernels(validate_psf(load_array(path), spec.path).numpy(), source=str(path))
    g = torch.Generator().manual_seed(spec.seed)
    return PsfGridKernels(lens_psf_grid(spec.grid, spec.size, g, spec.sigma, spec.astigmatism, spec.coma).numpy())


def _sr_kernel(cfg: DegradeConfig, root: Path) -> PsfOperator:
    spec = cfg.sr_kernel
    if spec.path:
        kernel = load_kernel(resolve_path(spec.path, root))
    else:
        kernel = random_sr_kernel(spec.factor, torch.Generator().manual_seed(spec.seed), spec.size or None, spec.noise)
    return SrKernel(kernel.numpy(), spec.factor)


TRUTH: dict[str, Callable[[DegradeConfig, Path], PsfOperator]] = {
    "deblur": _blur, "psf_grid": _psf_grid, "sr_kernel": _sr_kernel}


def true_operator(task: str, cfg: DegradeConfig, root: Path) -> PsfOperator:
    """The synthetic forward model of ``task`` described by ``cfg``; files resolve against ``root``."""
    return TRUTH[task](cfg, root)
