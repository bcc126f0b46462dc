"""The conditional flow-matching loss on the linear path, with fresh or fixed noise."""

from __future__ import annotations

from typing import Callable

import torch

from ddmops.flow import path as fpath


def draw_noise(shape: torch.Size, generator: torch.Generator,
               time_sampling: str = "uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """eps (shape) and t (shape[0],) on the generator's device."""
    eps = torch.randn(shape, generator=generator, device=generator.device)
    return eps, fpath.sample_t(shape[0], generator, time_sampling)


def velocity_loss(net: Callable, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, **net_kw) -> torch.Tensor:
    """mean ||v(x_t, t) - (x - eps)||^2 with x_t = (1 - t) eps + t x. x, eps: (B, C, H, W); t: (B,)."""
    eps, t = eps.to(x), t.to(x)
    v = net(fpath.interpolate(x, eps, t), t, **net_kw)
    return torch.mean((v.float() - fpath.target_velocity(x, eps).float()) ** 2)


def flow_matching_loss(net: Callable, x: torch.Tensor, generator: torch.Generator,
                       time_sampling: str = "uniform", **net_kw) -> torch.Tensor:
    """The conditional flow-matching loss with fresh noise and times from ``generator``."""
    eps, t = draw_noise(x.shape, generator, time_sampling)
    return velocity_loss(net, x, eps, t, **net_kw)


@torch.no_grad()
def heldout_loss(net: torch.nn.Module, patches: torch.Tensor, positions: torch.Tensor | None = None,
                 seed: int = 1234, batch: int = 64) -> float:
    """Flow-matching loss on fixed patches (and their field positions, for position-aware
    networks) with fixed noise and stratified times (comparable across steps)."""
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    was_training = net.training
    net.eval()
    total = 0.0
    for i in range(0, len(patches), batch):
        x = patches[i:i + batch]
        eps = torch.randn(x.shape, generator=g)
        t = (torch.arange(len(x)) + 0.5 + i) / len(patches)
        kw = {"position": positions[i:i + batch].to(device)} if positions is not None else {}
        v = net(fpath.interpolate(x, eps, t).to(device), t.to(device), **kw)
        total += torch.sum((v.cpu() - fpath.target_velocity(x, eps)) ** 2).item() / x[0].numel()
    net.train(was_training)
    return total / len(patches)
