"""Resumable loops: the state a loop must restore, saved atomically under a run key.

A run key names what a loop computes (stage, config, input data); a checkpoint written under
another key (other params, other data) is ignored, so a rerun resumes only the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddmops.io import load_checkpoint, save_checkpoint


def load_matching(path: Path, run_key: str, device: str | torch.device = "cpu") -> dict:
    """The checkpoint at ``path`` if it was saved under ``run_key``, else {}."""
    if not run_key or not Path(path).exists():
        return {}
    state = load_checkpoint(path, map_location=device)
    return state if state.get("run_key") == run_key else {}


def generator_state(g: torch.Generator) -> torch.Tensor:
    return g.get_state().cpu()


def restore_generator(g: torch.Generator, state: torch.Tensor) -> None:
    g.set_state(state.to(g.get_state().device))


class Resumable:
    """Named parts of a loop's state, saved to one checkpoint and restored in place.

    A part is anything with ``state_dict``/``load_state_dict`` (networks, optimisers, EMAs),
    a ``torch.Generator`` or a tensor (copied into)."""

    def __init__(self, path: Path, run_key: str, **parts: Any):
        self.path, self.run_key, self.parts = Path(path), run_key, parts

    def resume(self, device: str | torch.device = "cpu") -> int:
        """Restore every part from a checkpoint of this run; -> its step (0 when there is none)."""
        state = load_matching(self.path, self.run_key, device)
        if not state:
            return 0
        for name, part in self.parts.items():
            if isinstance(part, torch.Generator):
                restore_generator(part, state[name])
            elif isinstance(part, torch.Tensor):
                part.copy_(state[name])
            else:
                part.load_state_dict(state[name])
        return int(state["step"])

    def save(self, step: int) -> None:
        state: dict[str, Any] = {"run_key": self.run_key, "step": step}
        for name, part in self.parts.items():
            state[name] = (generator_state(part) if isinstance(part, torch.Generator)
                           else part.detach().clone() if isinstance(part, torch.Tensor) else part.state_dict())
        save_checkpoint(self.path, state)
