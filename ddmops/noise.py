"""The noise level of observations, from the observations themselves.

Estimator: the median absolute deviation of the diagonal wavelet coefficients (Daubechies 2)
divided by 0.6745 (Donoho and Johnstone 1994; scikit-image's ``estimate_sigma`` at the finest
scale), per image and channel, then the median over them. Blur leaves the finest scale to the
noise, so blurred observations suit it. White noise puts the same energy in every scale of an
orthonormal wavelet and the signal only adds to the coarser ones, so a finest scale that reads
under half the next one has been emptied by processing (JPEG, demosaicing, denoising in the
camera): the estimate is then read one scale up, where the noise survives.
"""

from __future__ import annotations

import numpy as np
import pywt
import torch

SUPPRESSED = 0.5  # finest / second scale below this: the finest scale was emptied by compression


def mad_sigmas(image: np.ndarray) -> tuple[float, float]:
    """MAD noise std of a 2-D image from its diagonal coefficients at the finest scale and the
    next, from one two-level decomposition."""
    _, (_, _, second), (_, _, finest) = pywt.wavedec2(image, "db2", level=2)
    return tuple(float(np.median(np.abs(d)) / 0.6745) for d in (finest, second))


def estimate_noise(images: list[torch.Tensor]) -> float:
    """Noise std in the [-1, 1] range of images (C, H, W) in [-1, 1]."""
    levels = np.array([mad_sigmas(x.double().numpy()[c]) for x in images for c in range(x.shape[0])])
    finest, second = (float(v) for v in np.median(levels, axis=0))
    return second if finest < SUPPRESSED * second else finest
