"""What a training loop does with a non-finite loss or gradient, without waiting on the device.

Every step the loop asks :meth:`NanGuard.ok` whether its terms are finite and gets a device
boolean back: the optimiser step and the EMA update are skipped on the device when it is
false (no host synchronisation). The guard counts, also on the device, the first step each
term went bad and the longest run of skipped batches; :meth:`NanGuard.check`, called at log
and checkpoint steps (before a checkpoint is written), reads them and raises as the policy says.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddmops.errors import TrainingError

NAN_POLICIES = ("stop", "skip-batch")


class NanGuard:
    """``stop``: raise at the next check, naming the first bad step and term (the batches since
    were skipped, so nothing is lost). ``skip-batch``: drop such batches and go on, but stop
    after more than ``max_skips`` batches in a row."""

    def __init__(self, policy: str, checkpoint: Path, max_skips: int = 20):
        if policy not in NAN_POLICIES:
            raise ValueError(f"unknown NaN policy {policy!r}; use one of {NAN_POLICIES}")
        self.policy, self.checkpoint, self.max_skips = policy, checkpoint, max_skips
        self._first: dict[str, torch.Tensor] = {}  # term -> first step it was non-finite (-1: never)
        self._skipped = self._run = self._longest = None

    def ok(self, step: int, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """A device boolean: every term finite at ``step``. Nothing is read back to the host."""
        flags = {name: torch.isfinite(value.detach()).all() for name, value in terms.items()}
        ok = torch.stack(list(flags.values())).all()
        for name, finite in flags.items():
            first = self._first.get(name)
            if first is None:
                first = torch.full((), -1, dtype=torch.long, device=finite.device)
            self._first[name] = torch.where((first < 0) & ~finite, step, first)
        bad = (~ok).long()
        if self._skipped is None:
            self._skipped = self._run = self._longest = torch.zeros((), dtype=torch.long, device=ok.device)
        self._skipped = self._skipped + bad
        self._run = (self._run + 1) * bad
        self._longest = torch.maximum(self._longest, self._run)
        return ok

    @property
    def skipped(self) -> int:
        """Batches skipped so far (reads the device)."""
        return 0 if self._skipped is None else int(self._skipped)

    def check(self) -> None:
        """Raise if the policy says to stop (reads the device)."""
        if self._skipped is None or int(self._skipped) == 0:
            return
        if self.policy == "stop":
            step, term = min((int(s), name) for name, s in self._first.items() if int(s) >= 0)
            raise TrainingError(f"non-finite {term} at step {step}; the last good checkpoint is kept at "
                                f"{self.checkpoint}")
        if int(self._longest) > self.max_skips:
            raise TrainingError(f"non-finite losses in {int(self._longest)} batches in a row (skip-batch gives up "
                                f"after {self.max_skips}); the last good checkpoint is kept at {self.checkpoint}")
