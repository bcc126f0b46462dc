"""The fast paths give the slow paths' results: compiled training equals eager training, the
vectorised patch sampler equals crops cut one by one, and compilation falls back to eager
execution (with a one-line note) where it is unavailable."""

from __future__ import annotations

import pytest
import torch

from ddmops.config import PriorConfig, UNetConfig
from ddmops.data import PatchSampler
from ddmops.device import compiled
from ddmops.flow.train import train_prior
from ddmops.operators.psf_grid import position_map
from ddmops.tracker import NullTracker

SMALL = UNetConfig(channels=4, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))


def test_compiled_training_matches_eager(tmp_path, generator):
    images = [torch.rand(1, 12, 12, generator=generator) * 2 - 1 for _ in range(3)]
    out = {}
    for compile in (False, True):
        cfg = PriorConfig(model=SMALL, patch_size=8, batch_size=4, images=16, log_every=8, sample_every=10**6,
                          checkpoint_every=10**6, compile=compile)
        prior, result = train_prior(cfg, PatchSampler(images, 8, flips=True), torch.zeros(2, 1, 8, 8), img_channels=1,
                                    device=torch.device("cpu"), tracker=NullTracker(),
                                    checkpoint=tmp_path / f"{compile}.pt", run_key="", meta={}, progress=False)
        out[compile] = (prior, result)
    (eager, r0), (fast, r1) = out[False], out[True]
    assert r0.steps == r1.steps == 4
    for a, b in zip(eager.net.parameters(), fast.net.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert abs(r0.train_loss - r1.train_loss) < 1e-4


def test_compile_falls_back_to_eager(monkeypatch, capsys):
    def square(x):
        return x * x

    def refuse(fn):
        raise RuntimeError("no compiler here\nsecond line")
    monkeypatch.setattr(torch, "compile", refuse)
    assert compiled(square, True, "a test") is square
    assert "torch.compile unavailable for a test (RuntimeError: no compiler here); running eagerly" in \
        capsys.readouterr().err

    def broken(x):
        raise RuntimeError("backend failed")  # compilation fails at the first call
    monkeypatch.setattr(torch, "compile", lambda fn: broken)
    f = compiled(square, True, "a test")
    assert f(torch.tensor(3.0)) == 9.0 and f(torch.tensor(2.0)) == 4.0
    assert capsys.readouterr().err.count("running eagerly") == 1
    assert compiled(square, False, "a test") is square


@pytest.mark.parametrize("flips", [False, True])
def test_sampler_cuts_the_crops_one_by_one_would(flips, generator):
    """The one-gather sampler against crops cut and flipped in a loop from the same draws."""
    images = [torch.rand(3, 20 + i, 30 - 2 * i, generator=generator) for i in range(5)]
    geometry = torch.tensor([[3.0 * i, 5.0 * i, 100.0, 120.0] for i in range(5)], dtype=torch.float64)
    p, n = 9, 64
    sampler = PatchSampler(images, p, flips=flips, geometry=geometry)
    crops, pos = sampler.sample_with_position(n, torch.Generator().manual_seed(3))
    draws = torch.Generator().manual_seed(3)
    idx = torch.multinomial(sampler.weights, n, replacement=True, generator=draws)
    u = torch.rand(n, 4, generator=draws)
    for k, (i, (ur, uc, fh, fv)) in enumerate(zip(idx.tolist(), u.tolist())):
        img = images[i]
        r, c = int(ur * (img.shape[-2] - p + 1)), int(uc * (img.shape[-1] - p + 1))
        crop = img[:, r:r + p, c:c + p]
        crop = crop.flip(-1) if flips and fh < 0.5 else crop
        crop = crop.flip(-2) if flips and fv < 0.5 else crop
        assert torch.equal(crops[k], crop)
        top, left, full_h, full_w = geometry[i].tolist()
        assert torch.equal(pos[k], position_map(p, p, top + r, left + c, full_h, full_w))
    assert len({tuple(c.flatten()[:4].tolist()) for c in crops}) > n // 2  # really random crops
