"""Learning-rate schedules and logging cadences shared by every trainer."""

from __future__ import annotations

import math


def lr_factor(kind: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``: constant or cosine to 0."""
    if kind == "none":
        return 1.0
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    raise ValueError(f"unknown lr_decay {kind!r}; use 'none' or 'cosine'")


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def crossed(step: int, per_step: int, every: int) -> bool:
    """Whether the images seen by step ``step`` (``per_step`` each) passed a multiple of ``every``."""
    return (step * per_step) // every != ((step - 1) * per_step) // every
