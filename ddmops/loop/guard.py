"""What a training loop does with a non-finite loss or gradient."""

from __future__ import annotations

from pathlib import Path

import torch

from ddmops.errors import TrainingError

NAN_POLICIES = ("stop", "skip-batch")


class NanGuard:
    """``stop``: raise at once, naming the step and the term. ``skip-batch``: drop the batch
    (no optimiser step) and go on, but stop after ``max_skips`` batches in a row."""

    def __init__(self, policy: str, checkpoint: Path, max_skips: int = 20):
        if policy not in NAN_POLICIES:
            raise ValueError(f"unknown NaN policy {policy!r}; use one of {NAN_POLICIES}")
        self.policy, self.checkpoint, self.max_skips = policy, checkpoint, max_skips
        self.skipped = 0  # in total
        self._run = 0  # in a row

    def finite(self, term: str, value: torch.Tensor, step: int) -> bool:
        """True if ``value`` is finite; False if this batch is to be skipped; raises otherwise."""
        if bool(torch.isfinite(value).all()):
            self._run = 0
            return True
        self._run += 1
        self.skipped += 1
        if self.policy == "stop" or self._run > self.max_skips:
            why = "" if self.policy == "stop" else f" ({self._run} batches in a row; skip-batch gives up)"
            raise TrainingError(f"non-finite {term} at step {step}{why}; the last good checkpoint is kept at "
                                f"{self.checkpoint}")
        return False
