"""Training runs resume from their checkpoint exactly where they stopped."""

from __future__ import annotations

import pytest
import torch

from ddmops.config import PriorConfig, UNetConfig
from ddmops.data import PatchSampler
from ddmops.flow.train import train_prior
from ddmops.tracking import NullTracker


class Stop(Exception):
    pass


def setup(generator):
    images = [torch.rand(3, 24, 24, generator=generator) * 2 - 1 for _ in range(3)]
    cfg = PriorConfig(model=UNetConfig(channels=8), patch_size=8, batch_size=4, images=64, log_every=16,
                      sample_every=16, checkpoint_every=16, sample_steps=2, eval_patches=4)
    return cfg, PatchSampler(images, 8, flips=True), torch.rand(4, 3, 8, 8, generator=generator)


def run(cfg, sampler, val, ckpt, on_samples=None):
    return train_prior(cfg, sampler, val, img_channels=3, device=torch.device("cpu"), tracker=NullTracker(),
                       checkpoint=ckpt, run_key="k", meta={}, on_samples=on_samples, progress=False)


def test_resume_matches_uninterrupted(tmp_path, generator):
    cfg, sampler, val = setup(generator)
    full, res = run(cfg, sampler, val, tmp_path / "a.pt")
    assert res.steps == 16

    def stop_at_48(x, images):
        if images == 48:
            raise Stop  # killed after the checkpoint at 32 images, before the one at 48

    with pytest.raises(Stop):
        run(cfg, sampler, val, tmp_path / "b.pt", on_samples=stop_at_48)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 8
    resumed, res2 = run(cfg, sampler, val, tmp_path / "b.pt")
    assert res2.steps == 16
    for a, b in zip(full.net.parameters(), resumed.net.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_checkpoint_of_another_config_is_ignored(tmp_path, generator):
    cfg, sampler, val = setup(generator)
    run(cfg, sampler, val, tmp_path / "c.pt")
    other = train_prior(cfg, sampler, val, img_channels=3, device=torch.device("cpu"), tracker=NullTracker(),
                        checkpoint=tmp_path / "c.pt", run_key="other", meta={}, progress=False)
    assert other[1].images_per_sec > 0  # trained from scratch rather than resumed
