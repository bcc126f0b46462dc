"""Restoration problems: a task's forward operator and noisy measurements of clean images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ddmops.config import TaskConfig, TaskOperatorConfig
from ddmops.data import make_kernel
from ddmops.errors import ConfigError
from ddmops.operators.base import Operator
from ddmops.operators.blur import Blur
from ddmops.operators.inpaint import Inpaint, box_mask, random_mask
from ddmops.operators.nonlinear import CameraBlur
from ddmops.operators.phase import PhaseRetrieval
from ddmops.operators.psf_operator import PsfOperator
from ddmops.operators.sr import Downsample, bicubic_kernel


@dataclass(frozen=True)
class Problem:
    x: torch.Tensor  # (B, C, H, W) ground truth in [-1, 1]
    y: torch.Tensor  # measurements A(x) + sigma n
    op: Operator
    sigma: float


def task_operator(cfg: TaskOperatorConfig, shape: torch.Size, root: Path, generator: torch.Generator,
                  position: torch.Tensor | None = None, learned: PsfOperator | None = None) -> Operator:
    """The operator for images of ``shape`` (B, C, H, W); masks are drawn per image. Kind
    'learned' is ``learned`` (the operator ``cfg.source`` names, resolved by the stage); a learned
    PSF grid needs the images' field positions (B, 2, H, W)."""
    b, _, h, w = shape
    if cfg.kind == "blur":
        return Blur(make_kernel(cfg.kernel, root), "reflect")
    if cfg.kind == "camera":
        return CameraBlur(make_kernel(cfg.kernel, root), cfg.gain, cfg.gamma)
    if cfg.kind == "sr":
        if h % cfg.factor or w % cfg.factor:
            raise ValueError(f"image size {h}x{w} is not divisible by the SR factor {cfg.factor}")
        kernel = bicubic_kernel(cfg.factor) if cfg.sr_kernel == "bicubic" else make_kernel(cfg.kernel, root)
        return Downsample(kernel, cfg.factor, "reflect")
    if cfg.kind == "inpaint":
        masks = [box_mask(h, w, cfg.box, generator, margin=min(h, w) // 16) if cfg.mask == "box"
                 else random_mask(h, w, cfg.missing, generator) for _ in range(b)]
        return Inpaint(torch.stack(masks))
    if cfg.kind == "phase":
        return PhaseRetrieval(cfg.oversampling)
    if learned is None:
        raise ConfigError(f"operator kind 'learned' ({cfg.source}): resolve the operator first")
    return learned.operator(position)


def make_problem(cfg: TaskConfig, x: torch.Tensor, root: Path, seed: int,
                 position: torch.Tensor | None = None, learned: PsfOperator | None = None) -> Problem:
    """Seeded: the same config, images and seed give the same operator and measurements."""
    g = torch.Generator().manual_seed(seed)
    op = task_operator(cfg.operator, x.shape, root, g, position, learned)
    with torch.no_grad():
        clean = op.A(x)
    y = clean + cfg.noise_sigma * torch.randn(clean.shape, generator=g)
    return Problem(x=x, y=y, op=op, sigma=cfg.noise_sigma)
