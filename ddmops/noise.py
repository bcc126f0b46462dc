"""The noise level of observations, from the observations themselves.

Estimator: the median absolute deviation of the finest diagonal wavelet coefficients divided by
0.6745 (Donoho and Johnstone 1994, as scikit-image's ``estimate_sigma``), per image and channel,
then the median over them. Blur leaves the finest scale to the noise, so blurred observations
suit it; strong compression (JPEG) removes noise there and makes it read low.
"""

from __future__ import annotations

import numpy as np
import torch


def estimate_noise(images: list[torch.Tensor]) -> float:
    """Noise std in the [-1, 1] range of images (C, H, W) in [-1, 1]."""
    from skimage.restoration import estimate_sigma
    levels = [estimate_sigma(((x.double().numpy() + 1) / 2)[c]) for x in images for c in range(x.shape[0])]
    return float(2 * np.median(levels))  # [0, 1] units -> [-1, 1]
