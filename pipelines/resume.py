"""Resumable progress of a stage over batches of images, in one atomic checkpoint.

A restoration stage saves, after each batch, what it has done (restorations, counters, the
generator's state) and, for DCDP, its state inside the batch every few outer iterations. A
rerun with the same run key continues from there to the result an uninterrupted run gives.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddmops.inversion.dcdp import DcdpState
from ddmops.io import save_checkpoint
from ddmops.loop.checkpoint import generator_state, load_matching, restore_generator


class BatchProgress:
    def __init__(self, path: Path, run_key: str):
        self.path, self.run_key = path, run_key
        self.state = load_matching(path, run_key)

    def resume(self, fresh: dict, generator: torch.Generator) -> dict:
        """The saved values of ``fresh``'s keys (else ``fresh``'s); the generator as it was."""
        if "gen" in self.state:
            restore_generator(generator, self.state["gen"])
        return {k: self.state.get(k, v) for k, v in fresh.items()}

    def save(self, done: dict, generator: torch.Generator, partial: DcdpState | None = None) -> None:
        if not self.run_key:  # an untracked call (benchmarks): nothing to resume into
            return
        self.state = {"run_key": self.run_key, **done, "gen": generator_state(generator)}
        if partial is not None:
            self.state["partial"] = {"iteration": partial.iteration, "x": partial.x.cpu(),
                                     "x_data": partial.x_data.cpu()}
        save_checkpoint(self.path, self.state)

    def partial(self) -> DcdpState | None:
        """DCDP's saved state inside the current batch, if any."""
        s = self.state.get("partial")
        return DcdpState(s["iteration"], s["x"], s["x_data"]) if s else None
