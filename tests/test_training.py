"""Training runs resume from their checkpoint exactly where they stopped."""

from __future__ import annotations

import pytest
import torch

from ddmops.config import PriorConfig, UNetConfig
from ddmops.data import PatchSampler
from ddmops.flow.train import train_prior
from ddmops.tracker import NullTracker


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


def test_operator_learning_resumes_exactly(tmp_path, generator):
    """learn-operator killed after a checkpoint and rerun ends with the kernel (and the
    auxiliary flow) of an uninterrupted run."""
    from ddmops.config import LearnOperatorConfig
    from ddmops.ddm4ip.learner import learn_operator
    from ddmops.ddm4ip.models import KernelModel

    cfg, sampler, val = setup(generator)
    prior, _ = run(cfg, sampler, val, tmp_path / "prior.pt")
    op_cfg = LearnOperatorConfig(kernel_size=3, batch_size=4, images=48, log_every=16, plot_every=16,
                                 checkpoint_every=16)
    clean = PatchSampler(sampler.images, KernelModel(3, "gaussian", generator).crop_size(8), flips=True)

    def learn(ckpt, on_kernels=None):
        model = KernelModel(3, "gaussian", torch.Generator().manual_seed(0))
        return learn_operator(op_cfg, model, clean, prior, sigma=0.02, device=torch.device("cpu"),
                              tracker=NullTracker(), checkpoint=ckpt, run_key="k", on_kernels=on_kernels,
                              progress=False)

    def stop_at_32(kernels, images):
        if images == 32:
            raise Stop  # killed before the checkpoint at 32 images (plots come first)

    full = learn(tmp_path / "a.pt")
    with pytest.raises(Stop):
        learn(tmp_path / "b.pt", on_kernels=stop_at_32)
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 4  # the checkpoint at 16 images
    resumed = learn(tmp_path / "b.pt")
    assert resumed.steps == full.steps == 12
    torch.testing.assert_close(resumed.kernels, full.kernels, rtol=0, atol=1e-6)
    a, b = (torch.load(tmp_path / f, weights_only=True)["aux"] for f in ("a.pt", "b.pt"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
