"""DDM4IP step 2 recovers a known blur kernel from unpaired data within a CPU minute."""

from __future__ import annotations

import pytest
import torch

from ddmops.config import KernelRegConfig, LearnOperatorConfig, PriorConfig, UNetConfig
from ddmops.data import PatchSampler, degrade
from ddmops.ddm4ip.learner import learn_operator
from ddmops.ddm4ip.models import KernelModel
from ddmops.flow.train import train_prior
from ddmops.metrics import kernel_errors
from ddmops.operators.kernels import gaussian_kernel
from ddmops.tracker import NullTracker


def dead_leaves(n: int, size: int, g: torch.Generator) -> list[torch.Tensor]:
    """n grey images (1, size, size) in [-1, 1]: 40 overlapping discs of random grey levels and
    radii 2-8 px each (sharp edges in every direction make a blur identifiable)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for _ in range(n):
        img = torch.zeros(size, size)
        for _ in range(40):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            r = 2 + 6 * torch.rand((), generator=g).item()
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = torch.rand((), generator=g).item() * 2 - 1
        out.append(img[None])
    return out


@pytest.mark.slow
def test_learner_recovers_an_anisotropic_gaussian_from_unpaired_sets(tmp_path):
    torch.manual_seed(0)  # dropout / init inside the networks
    true = gaussian_kernel(7, (1.6, 0.6), angle=45.0)
    g = torch.Generator().manual_seed(0)
    clean = dead_leaves(64, 48, g)  # two independent sets: nothing paired
    degraded = [degrade(x[None], true, 0.02, g)[0] for x in dead_leaves(64, 48, g)]
    device = torch.device("cpu")
    prior_cfg = PriorConfig(model=UNetConfig(channels=16), patch_size=12, batch_size=32, images=9_600,
                            flips=False, log_every=10**9, sample_every=10**9, checkpoint_every=10**9)
    prior, _ = train_prior(prior_cfg, PatchSampler(degraded, 12), torch.zeros(4, 1, 12, 12), img_channels=1,
                           device=device, tracker=NullTracker(), checkpoint=tmp_path / "prior.pt", run_key="",
                           meta={}, progress=False)
    cfg = LearnOperatorConfig(kernel_size=7, init="uniform", batch_size=32, images=4_800, lr_kernel=3e-3,
                              lr_aux=3e-4, kernel_ema=0.05, log_every=10**9, plot_every=10**9,
                              checkpoint_every=10**9)
    model = KernelModel(7, "uniform", torch.Generator().manual_seed(0))
    start = kernel_errors(model.kernels()[0].detach(), true)
    result = learn_operator(cfg, model, PatchSampler(clean, model.crop_size(12), flips=True), prior, sigma=0.02,
                            device=device, tracker=NullTracker(), checkpoint=tmp_path / "kernel.pt", run_key="",
                            progress=False)
    learned = result.kernels[0]
    assert kernel_errors(learned, true).ncc >= 0.95 > start.ncc
    torch.testing.assert_close(learned.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    # the anisotropy is found, not just the spread: the learned kernel is closer to the truth than
    # to the same Gaussian turned by 90 degrees
    assert kernel_errors(learned, true).mae < kernel_errors(learned, gaussian_kernel(7, (1.6, 0.6), angle=-45.0)).mae


def _prior(observations, patch, tmp_path, geometry=None, position=False):
    """An observation prior trained on ``observations`` (a few CPU seconds)."""
    cfg = PriorConfig(model=UNetConfig(channels=16, position_channels=position), patch_size=patch, batch_size=32,
                      images=6_400, flips=False, log_every=10**9, sample_every=10**9, checkpoint_every=10**9)
    val_pos = torch.rand(4, 2, patch, patch) if position else None
    prior, _ = train_prior(cfg, PatchSampler(observations, patch, geometry=geometry), torch.zeros(4, 1, patch, patch),
                           img_channels=1, device=torch.device("cpu"), tracker=NullTracker(),
                           checkpoint=tmp_path / "prior.pt", run_key="", meta={}, progress=False, val_positions=val_pos)
    return prior


@pytest.mark.slow
def test_learner_resolves_a_psf_field(tmp_path):
    """A 2 x 2 grid of differently oriented PSFs over the field, from unpaired positioned tiles
    (each a blend of the four, as every pixel is): every learned node matches its own PSF, and
    the nodes match their own PSFs clearly better than the others' (the field is resolved, not
    averaged into one PSF)."""
    from ddmops.ddm4ip.models import PsfGridModel
    from ddmops.ddm4ip.spectral import fit_gaussians, spectral_target
    from ddmops.operators.psf_operator import PsfGridKernels
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    truth = torch.stack([gaussian_kernel(7, (1.5, 0.5), a) for a in (0.0, 45.0, 90.0, 135.0)])
    op = PsfGridKernels(truth.reshape(2, 2, 7, 7).numpy())

    def tiles(photos):  # 48 px tiles of 96 px photos, with their places
        out = [(p[:, r:r + 48, c:c + 48], [r, c, 96.0, 96.0]) for p in photos for r in (0, 48) for c in (0, 48)]
        return [t for t, _ in out], torch.tensor([place for _, place in out], dtype=torch.float64)
    clean, clean_geom = tiles(dead_leaves(12, 96, g))
    sharp, sharp_geom = tiles(dead_leaves(12, 96, g))
    from ddmops.operators.psf_grid import position_map
    observed = [op.operator(position_map(48, 48, *place)[None]).A(x[None])[0] + 0.02 * torch.randn(1, 42, 42, generator=g)
                for x, place in zip(sharp, sharp_geom.tolist())]
    observed_geom = op.output_geometry(sharp_geom)
    prior = _prior(observed, 12, tmp_path, observed_geom, position=True)
    cfg = LearnOperatorConfig(kernel_size=7, grid=(2, 2), batch_size=32, images=320, lr_kernel=1e-3, lr_aux=3e-4,
                              kernel_ema=0.05, log_every=10**9, plot_every=10**9, checkpoint_every=10**9,
                              reg=KernelRegConfig(spectral=1.0))
    model = PsfGridModel((2, 2), 7, "gaussian", torch.Generator().manual_seed(0))
    target = spectral_target(PatchSampler(clean, 40), PatchSampler(observed, 40, geometry=observed_geom), 0.02,
                             grid=(2, 2))
    model.set_psfs(fit_gaussians(target, 7))
    clean_sampler = PatchSampler(clean, model.crop_size(12), flips=True, geometry=clean_geom)
    result = learn_operator(cfg, model, clean_sampler, prior, sigma=0.02, device=torch.device("cpu"),
                            tracker=NullTracker(), checkpoint=tmp_path / "grid.pt", run_key="", spectral=target,
                            progress=False)
    ncc = torch.tensor([[kernel_errors(est, t).ncc for t in truth] for est in result.kernels])  # learned x true
    own, others = ncc.diagonal(), ncc[~torch.eye(4, dtype=torch.bool)]
    assert own.min() >= 0.83 and own.mean() >= others.mean() + 0.04, ncc


@pytest.mark.slow
def test_learner_recovers_an_sr_kernel(tmp_path):
    """x2 downsampling through a DIV2KRK-style anisotropic kernel, from unpaired sets: KernelGAN's
    deep linear network ends on the kernel (aliases folded in the spectral start)."""
    from ddmops.ddm4ip.models import SrKernelModel
    from ddmops.ddm4ip.spectral import fit_gaussians, spectral_target
    from ddmops.operators.kernels import random_sr_kernel
    from ddmops.operators.sr import Downsample
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    true = random_sr_kernel(2, torch.Generator().manual_seed(3))
    clean = dead_leaves(48, 64, g)
    op = Downsample(true, 2, "valid")
    observed = [op.A(x[None])[0] + 0.02 * torch.randn(op.A(x[None])[0].shape, generator=g) for x in dead_leaves(48, 64, g)]
    prior = _prior(observed, 12, tmp_path)
    cfg = LearnOperatorConfig(factor=2, sr_channels=16, batch_size=32, images=1_600, lr_kernel=2e-4, lr_aux=3e-4,
                              kernel_ema=0.05, log_every=10**9, plot_every=10**9, checkpoint_every=10**9,
                              reg=KernelRegConfig(center=0.1, sum_to_one=0.1, spectral=1.0))
    model = SrKernelModel(2, torch.Generator().manual_seed(0), cfg.sr_struct, cfg.sr_channels)
    start = kernel_errors(model.kernels()[0].detach(), true)
    target = spectral_target(PatchSampler(clean, 48), PatchSampler(observed, 24), 0.02, factor=2)
    model.set_psfs(fit_gaussians(target, model.size))
    result = learn_operator(cfg, model, PatchSampler(clean, model.crop_size(12), flips=True), prior, sigma=0.02,
                            device=torch.device("cpu"), tracker=NullTracker(), checkpoint=tmp_path / "sr.pt",
                            run_key="", spectral=target, progress=False)
    learned = model.operator_of(result.kernels)
    errors = kernel_errors(learned.psfs()[0], true)
    assert errors.ncc >= 0.99 and errors.mae < start.mae / 2, (errors, start)
    assert learned.factor == 2 and abs(float(learned.kernel.sum()) - 1) < 1e-5


def test_learner_without_a_pass_returns_its_start_scored(tmp_path):
    """images 0: no distribution-matching step; the start comes back unchanged (bit for bit),
    with its errors against the truth, the observation gap and one kernel picture."""
    from ddmops.flow.prior import FlowPrior
    from ddmops.flow.unet import UNetArch, VelocityUNet
    g = torch.Generator().manual_seed(0)
    clean = dead_leaves(4, 24, g)
    prior = FlowPrior(VelocityUNet(UNetArch.from_config(UNetConfig(channels=8), 1, 8)), {"patch_size": 8})
    model = KernelModel(5, "gaussian", torch.Generator().manual_seed(0))
    start = gaussian_kernel(5, (1.2, 0.6), 30.0)
    model.set_psfs(start[None])
    pictures = []
    cfg = LearnOperatorConfig(kernel_size=5, batch_size=4, images=0)
    result = learn_operator(cfg, model, PatchSampler(clean, model.crop_size(8)), prior, sigma=0.02,
                            device=torch.device("cpu"), tracker=NullTracker(), checkpoint=tmp_path / "learn.pt",
                            run_key="", truth=start[None], heldout=(torch.rand(8, 1, 8, 8, generator=g) * 2 - 1, None),
                            on_kernels=lambda k, n: pictures.append(n), progress=False)
    assert result.steps == 0 and result.images == 0
    assert torch.equal(result.kernels, model.kernels().detach().cpu())
    assert torch.allclose(result.kernels[0], start.to(result.kernels), atol=1e-6)
    assert result.losses["kernel/ncc"] > 0.9999 and result.losses["score/observation_gap"] >= 0
    assert pictures == [0] and not (tmp_path / "learn.pt").exists()
