"""Stage `learn-operator@<task>`: DDM4IP step 2, the task's forward model from unpaired sets."""

from __future__ import annotations

import torch

from ddmops.config import LearnOperatorConfig
from ddmops.data import PatchSampler, load_geometry, load_image_set
from ddmops.ddm4ip.learner import learn_operator, stack_errors
from ddmops.ddm4ip.models import build_model
from ddmops.flow.prior import FlowPrior
from ddmops.io import read_json, save_png, write_json
from ddmops.operators.psf_operator import PsfOperator
from ddmops.ops.serving import INFO_FILE
from ddmops.strict import flatten, to_dict
from pipelines.context import StageContext

HELDOUT_CROPS = 64  # real observation crops scoring the simulated ones (score/observation_gap)


def run(cfg: LearnOperatorConfig, ctx: StageContext, task: str) -> dict[str, float]:
    meta = read_json(ctx.ws.observed(task, "meta"))
    sigma = meta["noise_sigma"] if cfg.noise_sigma is None else cfg.noise_sigma
    prior = FlowPrior.load(ctx.ws.prior(task), ctx.device)
    patch = int(prior.meta["patch_size"])
    model = build_model(task, cfg, torch.Generator().manual_seed(cfg.seed))
    clean_file = ctx.ws.prepared("clean")
    clean = PatchSampler(load_image_set(clean_file), model.crop_size(patch), flips=True,
                         geometry=load_geometry(clean_file))
    heldout_file = ctx.ws.observed(task, "test")  # real observations the prior did not see
    crops, crop_pos = PatchSampler(load_image_set(heldout_file), patch, geometry=load_geometry(heldout_file)
                                   ).sample_with_position(HELDOUT_CROPS, torch.Generator().manual_seed(cfg.seed + 3))
    truth_file = ctx.ws.observed(task, "truth")
    truth = PsfOperator.load(truth_file) if truth_file.exists() else None

    def align(kernels: torch.Tensor) -> torch.Tensor:
        return model.operator_of(kernels).psfs_at_nodes_of(truth) if truth is not None else kernels

    def picture(kernels: torch.Tensor):
        return model.operator_of(kernels).picture(truth)

    result = learn_operator(
        cfg, model, clean, prior, sigma=sigma, device=ctx.device, tracker=ctx.tracker,
        checkpoint=ctx.ws.checkpoint(f"learn-operator-{task}"), run_key=ctx.run_key,
        truth=truth.psfs() if truth is not None else None, align=align,
        heldout=(crops, crop_pos if prior.arch.position_channels else None),
        on_kernels=lambda k, n: ctx.tracker.log_image(picture(k), f"operator/{n:09d}.png"), progress=ctx.progress,
        nan_policy=ctx.nan_policy)
    learned = model.operator_of(result.kernels)
    out = ctx.ws.operator(task)
    learned.save(out)
    write_json(out.parent / INFO_FILE, {"task": task, "family": learned.family, "noise_sigma": sigma,
                                        "shapes": {k: list(v.shape) for k, v in learned.arrays().items()}})
    save_png(out.parent / "operator.png", picture(result.kernels))
    for name in (out.name, INFO_FILE, "operator.png"):
        ctx.tracker.log_artifact(out.parent / name, "operator")
    metrics = {k: v for k, v in result.losses.items() if k.startswith(("loss/", "score/"))}
    metrics |= {"train/steps": result.steps, "train/images": result.images, "train/seconds": result.seconds}
    if truth is not None:
        metrics |= stack_errors(learned.psfs_at_nodes_of(truth), truth.psfs())
    if ctx.register and ctx.tracker.run_id:  # a real MLflow run: a new registry version with alias `candidate`
        from ddmops.ops.registry import log_operator
        version = log_operator(learned, task=task, info={"noise_sigma": sigma}, metrics=metrics,
                               params=flatten(to_dict(cfg)), training_data=ctx.ws.key(ctx.ws.observed(task, "train").parent))
        ctx.tracker.set_tags({"ddmops.model": f"models:/{version.name}/{version.version}"})
    return metrics
