"""A physical nonlinear blur: optical blur on linear intensities, then a camera's response.

No pretrained neural blur model can be downloaded, so the nonlinear-deblur task uses
this model of a real camera: the scene's linear intensity u = (x + 1) / 2 is blurred
(k * u, motion or defocus), multiplied by an exposure gain, compressed by a gamma
response curve and clipped softly at the sensor's full well:

    y = 2 * soft_clip(g * (k * u)) ** (1 / gamma) - 1,  soft_clip(v) = v - softplus(b (v - 1)) / b

The soft clip is smooth (differentiable everywhere) and tends to min(v, 1) as b grows;
bright regions saturate, as in real photographs, which a linear model cannot express.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddmops.operators.base import Operator
from ddmops.operators.blur import convolve


class CameraBlur(Operator):
    """x: (B, C, H, W) in [-1, 1] -> y: (B, C, H, W) in [-1, 1] (reflect padding)."""

    is_linear = False

    def __init__(self, kernel: torch.Tensor, gain: float = 1.3, gamma: float = 2.2, sharpness: float = 20.0):
        super().__init__()
        self.register_buffer("kernel", kernel)
        self.gain, self.gamma, self.sharpness = gain, gamma, sharpness

    def A(self, x: torch.Tensor) -> torch.Tensor:
        u = convolve((x + 1) / 2, self.kernel, "reflect") * self.gain
        b = self.sharpness
        v = u - F.softplus(b * (u - 1)) / b
        return 2 * v.clamp_min(1e-6) ** (1 / self.gamma) - 1
