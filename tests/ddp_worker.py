"""Trains a tiny prior and writes its per-step loss curve; run directly or under torchrun."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ddmops.config import PriorConfig, UNetConfig
from ddmops.data import PatchSampler
from ddmops.loop.distributed import from_environment, shutdown
from ddmops.flow.train import train_prior
from ddmops.tracker import NullTracker


class Curve(NullTracker):
    def __init__(self):
        super().__init__()
        self.losses: list[float] = []

    def log_metrics(self, metrics, step=None):
        if "loss/train" in metrics:
            self.losses.append(metrics["loss/train"])


def train(out_dir: Path, dist=None) -> list[float]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 20, 20, generator=g) * 2 - 1 for _ in range(3)]
    cfg = PriorConfig(model=UNetConfig(channels=8), patch_size=8, batch_size=8, images=64, log_every=8,
                      sample_every=10**6, checkpoint_every=10**6, eval_patches=4, lr_decay="none")
    tracker = Curve()
    kw = {"dist": dist} if dist is not None else {}
    train_prior(cfg, PatchSampler(images, 8, flips=True), torch.zeros(4, 3, 8, 8), img_channels=3,
                device=torch.device("cpu"), tracker=tracker, checkpoint=out_dir / "ckpt.pt", run_key="ddp",
                meta={}, progress=False, **kw)
    return tracker.losses


if __name__ == "__main__":
    out = Path(sys.argv[1])
    dist = from_environment(torch.device("cpu"))
    losses = train(out / f"rank{dist.rank}", dist)
    if dist.is_main:
        (out / "losses.json").write_text(json.dumps(losses))
    shutdown()
