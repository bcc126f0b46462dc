"""A trained flow prior: velocity, denoiser (x0-prediction) and sampler, saved as safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ddmops.device import Precision, autocast, compiled
from ddmops.errors import DataError
from ddmops.flow import path as fpath
from ddmops.flow.solver import Method, integrate
from ddmops.flow.tiling import tiled
from ddmops.flow.unet import UNetArch, VelocityUNet
from ddmops.io import atomic_write

FORMAT = "ddmops.flow-prior/1"


class FlowPrior(torch.nn.Module):
    """Wraps a velocity network; images are (B, C, H, W) in [-1, 1], t in [0, 1]."""

    def __init__(self, net: VelocityUNet, meta: dict | None = None):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.meta = dict(meta or {})
        self.nfe = 0  # velocity evaluations, counted per image batch
        self.tile = 0  # > 0: images larger than this go through the network in blended tiles
        object.__setattr__(self, "_call", self.net)  # not a submodule: the same weights as net
        self.precision: Precision = "fp32"

    def accelerate(self, compile: bool = False, precision: Precision = "fp32") -> "FlowPrior":
        """Evaluate the network compiled (``torch.compile``, eager where unavailable) and/or under
        autocast ('bf16': tensor cores on GPUs); velocities come back in the input's dtype."""
        object.__setattr__(self, "_call", compiled(self.net, compile, "sampling"))
        self.precision = precision
        return self

    def _net(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
             position: torch.Tensor | None) -> torch.Tensor:
        with autocast(x.device, self.precision):
            return self._call(x, t, labels, position).to(x.dtype)

    @property
    def arch(self) -> UNetArch:
        return self.net.arch

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor | float, position: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.dim() == 0 else t
        self.nfe += 1
        if not self.tile:
            return self._net(x_t, t, labels, position)

        def per_tile(z: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
            n = z.shape[0] // x_t.shape[0]  # tiles are stacked tile-major along the batch
            return self._net(z, t.repeat(n), labels.repeat(n) if labels is not None else None, position)
        return tiled(per_tile, x_t, self.tile, position=position)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor | float, **kw) -> torch.Tensor:
        """x0-prediction x_t + (1 - t) v(x_t, t): the prior's posterior-mean denoiser."""
        return fpath.x0_from_velocity(x_t, self.velocity(x_t, t, **kw), t)

    @torch.no_grad()
    def sample(self, shape: tuple[int, ...], generator: torch.Generator, steps: int = 32,
               method: Method = "euler", **kw) -> torch.Tensor:
        """Draw images by integrating from noise (t = 0) to data (t = 1). -> shape"""
        device = next(self.net.parameters()).device
        eps = torch.randn(shape, generator=generator, device=generator.device).to(device)
        return integrate(lambda x, t: self.velocity(x, t, **kw), eps, 0.0, 1.0, steps, method)

    def save(self, path: Path) -> None:
        meta = {"format": FORMAT, "arch": json.dumps(self.arch.to_dict()), "meta": json.dumps(self.meta)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        atomic_write(path, lambda fh: fh.write(save(tensors, metadata=meta)))

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu") -> "FlowPrior":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: prior not found (run `ddmops run train-prior` first)")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
            tensors = load_file(str(path), device=str(device))
        except (SafetensorError, OSError) as exc:
            raise DataError(f"{path}: unreadable prior ({exc})") from None
        if header.get("format") != FORMAT:
            raise DataError(f"{path}: not a ddmops flow prior (format {header.get('format')!r}, expected {FORMAT})")
        net = VelocityUNet(UNetArch.from_dict(json.loads(header["arch"]))).to(device)
        net.load_state_dict(tensors)
        return cls(net, json.loads(header["meta"]))

