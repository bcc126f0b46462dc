"""Stage `learn-operator@<task>`: DDM4IP step 2, the task's forward model from unpaired sets."""

from __future__ import annotations

import numpy as np
import torch

from ddmops.config import LearnOperatorConfig
from ddmops.data import PatchSampler, load_geometry, load_image_set
from ddmops.ddm4ip.families import (FAMILY, INFO_FILE, OPERATOR_FILE, build_model, learned_arrays, load_arrays,
                                    psf_stack, psfs_like)
from ddmops.ddm4ip.learner import learn_operator, stack_errors
from ddmops.flow.prior import FlowPrior
from ddmops.io import read_json, save_npz, save_png, write_json
from ddmops.plots import psf_comparison
from ddmops.strict import flatten, to_dict
from pipelines.context import StageContext
from pipelines.degrade import FILES as DEGRADED
from pipelines.prepare import FILES as PREPARED
from pipelines.train_prior import prior_path

HELDOUT_CROPS = 64  # real observation crops scoring the simulated ones (score/observation_gap)


def run(cfg: LearnOperatorConfig, ctx: StageContext, task: str) -> dict[str, float]:
    folder, out = ctx.ws.path("degraded", task), ctx.ws.path("operator", task)
    meta = read_json(folder / DEGRADED["meta"])
    sigma = meta["noise_sigma"] if cfg.noise_sigma is None else cfg.noise_sigma
    prior = FlowPrior.load(prior_path(ctx, task), ctx.device)
    model = build_model(task, cfg, torch.Generator().manual_seed(cfg.seed))
    clean_file = ctx.ws.path("prepared") / PREPARED["clean"]
    clean = PatchSampler(load_image_set(clean_file), model.input_size(int(prior.meta["patch_size"])), flips=True,
                         geometry=load_geometry(clean_file))
    heldout_file = folder / DEGRADED["test_degraded"]  # real observations the prior did not see
    crops, crop_pos = PatchSampler(load_image_set(heldout_file), int(prior.meta["patch_size"]),
                                   geometry=load_geometry(heldout_file)).sample_with_position(
        HELDOUT_CROPS, torch.Generator().manual_seed(cfg.seed + 3))
    truth = load_arrays(folder / DEGRADED["truth"]) if (folder / DEGRADED["truth"]).exists() else None
    true_psfs = psf_stack(truth) if truth is not None else None
    grid = tuple(truth["psf_grid"].shape[:2]) if truth is not None and "psf_grid" in truth else None

    def align(kernels: torch.Tensor) -> torch.Tensor:
        return psfs_like(learned_arrays(task, kernels, cfg), truth) if truth is not None else kernels

    def compare(kernels: torch.Tensor) -> np.ndarray:
        shown_grid = grid if truth is not None else (cfg.grid if task == "psf_grid" else None)
        return psf_comparison(align(kernels), true_psfs, shown_grid)

    result = learn_operator(
        cfg, model, clean, prior, sigma=sigma, device=ctx.device, tracker=ctx.tracker,
        checkpoint=ctx.ws.path("checkpoints", f"learn-operator-{task}.pt"), run_key=ctx.run_key,
        truth=true_psfs, align=align, heldout=(crops, crop_pos if prior.arch.position_channels else None),
        on_kernels=lambda k, n: ctx.tracker.log_image(compare(k), f"operator/{n:09d}.png"), progress=ctx.progress,
        nan_policy=ctx.nan_policy)
    arrays = learned_arrays(task, result.kernels, cfg)
    save_npz(out / OPERATOR_FILE, arrays)
    write_json(out / INFO_FILE, {"task": task, "family": FAMILY[task], "noise_sigma": sigma,
                                 "shapes": {k: list(v.shape) for k, v in arrays.items()}})
    save_png(out / "operator.png", compare(result.kernels))
    for name in (OPERATOR_FILE, INFO_FILE, "operator.png"):
        ctx.tracker.log_artifact(out / name, "operator")
    metrics = {k: v for k, v in result.losses.items() if k.startswith(("loss/", "score/"))}
    metrics |= {"train/steps": result.steps, "train/images": result.images, "train/seconds": result.seconds}
    if truth is not None:
        metrics |= stack_errors(align(result.kernels), true_psfs)
    if ctx.register and ctx.tracker.run_id:  # a real MLflow run: a new registry version with alias `candidate`
        from ddmops.ops.registry import log_operator
        version = log_operator(arrays, task=task, info={"noise_sigma": sigma}, metrics=metrics,
                               params=flatten(to_dict(cfg)), training_data=ctx.ws.key(folder))
        ctx.tracker.set_tags({"ddmops.model": f"models:/{version.name}/{version.version}"})
    return metrics
