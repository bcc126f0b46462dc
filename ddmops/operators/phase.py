"""Fourier phase retrieval: the magnitude of the zero-padded 2-D Fourier transform."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddmops.operators.base import Operator


class PhaseRetrieval(Operator):
    """y = |FFT2(pad(u))| / sqrt(N) on intensities u = (x + 1) / 2 in [0, 1].

    x: (B, C, H, W) -> (B, C, round(o H), round(o W)) with oversampling o (padded side
    = o x side, zeros around the image; the unitary 1/sqrt(N) keeps energies equal).
    Intensities are non-negative, as for a physical object, which the method needs.
    """

    is_linear = False

    def __init__(self, oversampling: float = 2.0):
        super().__init__()
        if oversampling < 1:
            raise ValueError(f"oversampling must be >= 1, got {oversampling}")
        self.oversampling = oversampling

    def A(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = round(self.oversampling * h) - h, round(self.oversampling * w) - w
        u = F.pad((x + 1) / 2, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return torch.fft.fft2(u, norm="ortho").abs()
