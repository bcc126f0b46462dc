"""Non-finite losses: stop with the step and the term, keep the last good checkpoint, mark the
MLflow run FAILED; or skip the batch and go on."""

from __future__ import annotations

import pytest
import torch

from ddmops.config import PriorConfig, UNetConfig
from ddmops.data import PatchSampler
from ddmops.errors import TrainingError
from ddmops.flow.train import train_prior
from ddmops.io import load_checkpoint
from ddmops.tracker import NullTracker
from tests.test_pipeline import sh


class PoisonedSampler(PatchSampler):
    """Returns NaN crops at the given calls."""

    def __init__(self, images, patch, bad_calls):
        super().__init__(images, patch)
        self.calls, self.bad = 0, set(bad_calls)

    def sample(self, batch, generator):
        x = super().sample(batch, generator)
        self.calls += 1
        return x * float("nan") if self.calls in self.bad else x


def run(tmp_path, sampler, policy, images=64):
    cfg = PriorConfig(model=UNetConfig(channels=8), patch_size=8, batch_size=4, images=images, log_every=16,
                      sample_every=10**6, checkpoint_every=16)
    tracker = NullTracker()
    out = train_prior(cfg, sampler, torch.zeros(2, 3, 8, 8), img_channels=3, device=torch.device("cpu"),
                      tracker=tracker, checkpoint=tmp_path / "ckpt.pt", run_key="k", meta={}, progress=False,
                      nan_policy=policy)
    return out, tracker


def images(g):
    return [torch.rand(3, 16, 16, generator=g) * 2 - 1 for _ in range(2)]


def test_stop_names_step_and_keeps_checkpoint(tmp_path, generator):
    with pytest.raises(TrainingError, match=r"non-finite flow-matching loss or gradient at step 9.*ckpt.pt"):
        run(tmp_path, PoisonedSampler(images(generator), 8, {10}), "stop")
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 8  # the last good one


def test_skip_batch_goes_on(tmp_path, generator):
    (prior, result), tracker = run(tmp_path, PoisonedSampler(images(generator), 8, {3, 7}), "skip-batch")
    assert result.steps == 16 and tracker.metrics["train/skipped_batches"] == 2
    assert all(torch.isfinite(p).all() for p in prior.net.parameters())


def test_skip_batch_gives_up_when_everything_is_nan(tmp_path, generator):
    with pytest.raises(TrainingError, match="in a row"):
        run(tmp_path, PoisonedSampler(images(generator), 8, range(1, 100)), "skip-batch", images=128)


def test_failed_stage_marks_mlflow_run(tiny_workspace):
    ws = tiny_workspace
    assert sh(["ddmops", "run", "prepare"], ws).returncode == 0
    done = sh(["ddmops", "run", "train-prior", "-d", "clean", "--set", "train_prior.clean.lr=1e30"], ws)
    assert done.returncode == 1 and "non-finite" in done.stderr and "Traceback" not in done.stderr
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlruns.db'}")
    run = mlflow.search_runs(search_all_experiments=True, output_format="list",
                             filter_string="tags.`ddmops.stage` = 'train-prior-clean'")[0]
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["ddmops.error"]


def learn(tmp_path, clean, policy):
    """DDM4IP step 2 on 8 px patches with an untrained observation prior (enough to see the guard)."""
    from ddmops.config import LearnOperatorConfig
    from ddmops.ddm4ip.learner import learn_operator
    from ddmops.ddm4ip.models import KernelModel
    from ddmops.flow.prior import FlowPrior
    from ddmops.flow.unet import UNetArch, VelocityUNet
    torch.manual_seed(0)
    prior = FlowPrior(VelocityUNet(UNetArch.from_config(UNetConfig(channels=8), 3, 8)), {"patch_size": 8})
    cfg = LearnOperatorConfig(kernel_size=3, batch_size=4, images=64, log_every=16, plot_every=10**6,
                              checkpoint_every=16)
    model = KernelModel(3, "gaussian", torch.Generator().manual_seed(0))
    return learn_operator(cfg, model, clean, prior, sigma=0.02, device=torch.device("cpu"), tracker=NullTracker(),
                          checkpoint=tmp_path / "learn.pt", run_key="k", progress=False, nan_policy=policy)


def test_learner_stops_at_a_non_finite_loss_and_keeps_its_checkpoint(tmp_path, generator):
    clean = PoisonedSampler(images(generator), 10, {20})  # crop batches 2s+1, 2s+2 feed step s: its operator update
    with pytest.raises(TrainingError, match=r"non-finite distribution-matching loss at step 9.*learn.pt"):
        learn(tmp_path, clean, "stop")
    assert load_checkpoint(tmp_path / "learn.pt")["step"] == 8


def test_learner_skips_non_finite_batches(tmp_path, generator):
    result = learn(tmp_path, PoisonedSampler(images(generator), 10, {3, 8, 19}), "skip-batch")
    assert result.steps == 16 and torch.isfinite(result.kernels).all()
    assert abs(result.kernels.sum().item() - 1) < 1e-5


def test_cli_nan_policy_reaches_the_trainer(tiny_workspace):
    """`--nan-policy skip-batch` on the command line: every batch diverges, and the stage gives up
    after 20 in a row (where 'stop' names the first bad step)."""
    ws = tiny_workspace
    assert sh(["ddmops", "run", "prepare"], ws).returncode == 0
    bad = ["--set", "train_prior.clean.lr=1e30", "--set", "train_prior.clean.images=1024"]
    skip = sh(["ddmops", "run", "train-prior", "-d", "clean", "--nan-policy", "skip-batch", *bad], ws)
    assert skip.returncode == 1 and "in a row" in skip.stderr and "Traceback" not in skip.stderr
    stop = sh(["ddmops", "run", "train-prior", "-d", "clean", *bad], ws)
    assert stop.returncode == 1 and "non-finite flow-matching loss or gradient at step" in stop.stderr
    wrong = sh(["ddmops", "run", "train-prior", "-d", "clean", "--nan-policy", "ignore"], ws)
    assert wrong.returncode == 1 and "--nan-policy 'ignore'" in wrong.stderr
