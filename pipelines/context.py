"""What every stage function receives besides its own config."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddmops.loop.distributed import Dist
from ddmops.tracker import NullTracker, Tracker
from ddmops.ops.workspace import Workspace


@dataclass(frozen=True)
class StageContext:
    ws: Workspace
    tracker: Tracker = field(default_factory=NullTracker)
    device: torch.device = torch.device("cpu")
    run_key: str = ""  # identifies stage + config + inputs: checkpoints resume only on a match
    progress: bool = True
    dist: Dist = field(default_factory=Dist)  # process group under torchrun (train-prior only)
    nan_policy: str = "stop"  # non-finite loss in training: 'stop' or 'skip-batch'
    register: bool = True  # learned operators become registry versions (not for tuning trials)
