"""Compute-device choice: the GPU when present, the CPU otherwise."""

from __future__ import annotations

import torch


def pick_device(name: str | None = None) -> torch.device:
    """``name`` ('cpu', 'cuda', 'cuda:1', ...) if given, else CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
