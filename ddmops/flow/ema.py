"""Exponential moving averages of network weights: classic or power-function (EDM2)."""

from __future__ import annotations

import copy

import numpy as np
import torch


def power_exponent(std: float) -> float:
    """EDM2's gamma for a relative std: the largest root of
    g^3 + 7 g^2 + (16 - std^-2) g + (12 - std^-2) = 0."""
    s = std ** -2
    return float(np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max())


class Ema:
    """Keeps ``self.model``, an averaged copy of a network.

    kind 'classic': avg <- decay * avg + (1 - decay) * w at every update.
    kind 'power': decay_t = (1 - 1/t) ** (gamma + 1) at update t (t >= 1), which
    averages over a window growing with training (EDM2, Karras et al. 2024).
    kind 'none': the copy follows the weights exactly.
    """

    def __init__(self, model: torch.nn.Module, kind: str = "power", decay: float = 0.999, std: float = 0.05):
        if kind not in ("classic", "power", "none"):
            raise ValueError(f"unknown EMA kind {kind!r}")
        self.kind, self.decay = kind, decay
        self.gamma = power_exponent(std) if kind == "power" else 0.0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        if self.kind == "classic":
            return self.decay
        if self.kind == "power":
            return (1.0 - 1.0 / self.updates) ** (self.gamma + 1.0)
        return 0.0

    @torch.no_grad()
    def update(self, model: torch.nn.Module, ok: torch.Tensor | None = None) -> None:
        """Average in ``model``'s weights; ``ok`` (a device boolean) false leaves the average as
        it was, decided on the device (a skipped batch still counts as an update)."""
        self.updates += 1
        rate = 1.0 - self.current_decay()
        avgs, curs = list(self.model.parameters()), [p.detach() for p in model.parameters()]
        if ok is None:
            torch._foreach_lerp_(avgs, curs, rate)
        else:
            deltas = torch._foreach_sub(curs, avgs)
            torch._foreach_mul_(deltas, ok.to(avgs[0].dtype) * rate)
            torch._foreach_add_(avgs, deltas)
        for avg, cur in zip(self.model.buffers(), model.buffers()):
            avg.copy_(cur)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
