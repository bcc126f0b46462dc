"""Classical non-blind deblurring (scikit-image): Wiener, unsupervised Wiener, Richardson-Lucy.

The references a restoration with a learned prior must beat. The observation y of a 'valid'
blur is K - 1 pixels smaller than the scene: it is reflect-padded to the scene's size, deblurred
(scikit-image works circularly, on [0, 1] intensities, channel by channel) and returned at the
scene's size, (B, C, h + K - 1, w + K - 1) in [-1, 1].
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def _per_channel(y: torch.Tensor, kernel: torch.Tensor, deblur: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    k = kernel.detach().double().cpu().numpy()
    r = (k.shape[-1] - 1) // 2
    padded = F.pad(y.detach().double().cpu(), (r, r, r, r), mode="reflect")
    u = ((padded + 1) / 2).clamp(0, 1).numpy()
    out = np.stack([np.stack([deblur(channel, k) for channel in image]) for image in u])
    return torch.from_numpy(out).to(y) * 2 - 1


def wiener(y: torch.Tensor, kernel: torch.Tensor, balance: float) -> torch.Tensor:
    """Wiener deconvolution with regularisation ``balance`` (noise-to-signal, Laplacian prior)."""
    from skimage.restoration import wiener as sk_wiener
    return _per_channel(y, kernel, lambda u, k: sk_wiener(u, k, balance))


def unsupervised_wiener(y: torch.Tensor, kernel: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Wiener deconvolution whose regularisation is estimated from the data (Gibbs sampling)."""
    from skimage.restoration import unsupervised_wiener as sk_unsupervised
    return _per_channel(y, kernel, lambda u, k: sk_unsupervised(u, k, rng=seed)[0])


def richardson_lucy(y: torch.Tensor, kernel: torch.Tensor, iterations: int) -> torch.Tensor:
    """Richardson-Lucy iterations (Poisson maximum likelihood; stopping early regularises)."""
    from skimage.restoration import richardson_lucy as sk_rl
    return _per_channel(y, kernel, lambda u, k: sk_rl(u, k, num_iter=iterations, clip=True))
