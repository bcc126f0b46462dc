"""Means of logged values over a window of steps, summed on the device and read only at
log steps, so a training loop never waits on the device to record its losses."""

from __future__ import annotations

import math
import time

import torch


class WindowMeans:
    """Running means of scalar tensors; non-finite values are left out."""

    def __init__(self):
        self._sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, values: dict[str, torch.Tensor], step: bool = True) -> None:
        for name, value in values.items():
            v = value.detach().double()
            finite = torch.isfinite(v)
            total, count = self._sums.get(name, (torch.zeros_like(v), torch.zeros_like(v)))
            self._sums[name] = (total + torch.where(finite, v, 0.0), count + finite.double())
        self.steps += int(step)

    def read(self) -> tuple[dict[str, float], int, float]:
        """(means, steps, seconds) of the window (NaN where nothing finite came), then a new window."""
        means = {name: (float(total) / float(count) if float(count) else math.nan)
                 for name, (total, count) in self._sums.items()}
        out = (means, self.steps, time.perf_counter() - self.start)
        self.__init__()
        return out
