"""Stage `learn-operator@<task>`: DDM4IP step 2, the task's forward model from unpaired sets."""

from __future__ import annotations

import sys

import torch

from ddmops.config import LearnOperatorConfig
from ddmops.data import PatchSampler, load_geometry, load_image_set
from ddmops.ddm4ip.blind import blind_kernel, gray_tiles
from ddmops.ddm4ip.learner import learn_operator, stack_errors
from ddmops.ddm4ip.models import LearnableOperator, build_model
from ddmops.ddm4ip.spectral import SpectralTarget, fit_gaussians, spectral_loss, spectral_target
from ddmops.flow.prior import FlowPrior
from ddmops.io import read_json, save_png, write_json
from ddmops.operators.psf_operator import PsfOperator
from ddmops.ops.serving import INFO_FILE
from ddmops.strict import flatten, to_dict
from pipelines.context import StageContext

HELDOUT_CROPS = 64  # real observation crops scoring the simulated ones (score/observation_gap)
BLIND_TILES = 512  # observed tiles the blind start deconvolves at most


def run(cfg: LearnOperatorConfig, ctx: StageContext, task: str) -> dict[str, float]:
    meta = read_json(ctx.ws.observed(task, "meta"))
    sigma = meta["noise_sigma"] if cfg.noise_sigma is None else cfg.noise_sigma
    prior = FlowPrior.load(ctx.ws.prior(task), ctx.device)
    patch = int(prior.meta["patch_size"])
    model = build_model(task, cfg, torch.Generator().manual_seed(cfg.seed))
    if model.size > model.factor * patch // 2:
        warn(ctx, f"learn_operator.{task}: a {model.size} px kernel is wider than half the observation prior's "
                  f"{model.factor * patch} px field of view (train_prior.{task}.patch_size {patch}); the prior cannot "
                  f"hold such a blur's statistics: use patches of at least {2 * model.size // model.factor} px "
                  "(init: spectral and reg.spectral still see it)")
    clean_file, observed_file = ctx.ws.prepared("clean"), ctx.ws.observed(task, "train")
    clean_images, observed = load_image_set(clean_file), load_image_set(observed_file)
    clean = PatchSampler(clean_images, model.crop_size(patch), flips=True, geometry=load_geometry(clean_file))
    heldout_file = ctx.ws.observed(task, "test")  # real observations the prior did not see
    crops, crop_pos = PatchSampler(load_image_set(heldout_file), patch, geometry=load_geometry(heldout_file)
                                   ).sample_with_position(HELDOUT_CROPS, torch.Generator().manual_seed(cfg.seed + 3))
    spectral = second_order(cfg, model, clean_images, observed, load_geometry(observed_file), sigma)
    start = blind_or_spectral(cfg, ctx, model, task, observed, spectral)
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
        heldout=(crops, crop_pos if prior.arch.position_channels else None), spectral=spectral,
        on_kernels=lambda k, n: ctx.tracker.log_image(picture(k), f"operator/{n:09d}.png"), progress=ctx.progress,
        nan_policy=ctx.nan_policy)
    learned = model.operator_of(result.kernels)
    out = ctx.ws.operator(task)
    learned.save(out)
    scores = {k: v for k, v in result.losses.items() if k.startswith("score/")}  # need no truth
    write_json(out.parent / INFO_FILE, {"task": task, "family": learned.family, "noise_sigma": sigma,
                                        "shapes": {k: list(v.shape) for k, v in learned.arrays().items()},
                                        "scores": scores})
    save_png(out.parent / "operator.png", picture(result.kernels))
    for name in (out.name, INFO_FILE, "operator.png"):
        ctx.tracker.log_artifact(out.parent / name, "operator")
    metrics = {k: v for k, v in result.losses.items() if k.startswith(("loss/", "score/"))}
    metrics |= start | {"train/steps": result.steps, "train/images": result.images, "train/seconds": result.seconds}
    if truth is not None:
        metrics |= stack_errors(learned.psfs_at_nodes_of(truth), truth.psfs())
    if ctx.register and ctx.tracker.run_id:  # a real MLflow run: a new registry version with alias `candidate`
        from ddmops.ops.registry import log_operator
        version = log_operator(learned, task=task, info={"noise_sigma": sigma}, metrics=metrics,
                               params=flatten(to_dict(cfg)), device=cfg.device,
                               training_data=ctx.ws.key(ctx.ws.observed(task, "train").parent))
        ctx.tracker.set_tags({"ddmops.model": f"models:/{version.name}/{version.version}"})
    return metrics


def second_order(cfg: LearnOperatorConfig, model: LearnableOperator, clean: list[torch.Tensor],
                 observed: list[torch.Tensor], observed_geometry: torch.Tensor | None,
                 sigma: float) -> SpectralTarget | None:
    """The power spectra of the clean and observed sets (images (C, H, W)) when the config uses
    them (init 'spectral', reg.spectral), on the largest crops both sets hold (at most 64 px); for
    init 'spectral' (and 'auto') the model starts from the Gaussian PSFs that fit them. Crops are
    drawn with the learner's seed."""
    if cfg.init not in ("spectral", "auto") and cfg.reg.spectral == 0:
        return None
    side = min(64, min(min(y.shape[-2:]) for y in observed), min(min(x.shape[-2:]) for x in clean) // model.factor)
    patch = side // 2 * 2
    target = spectral_target(PatchSampler(clean, model.factor * patch),
                             PatchSampler(observed, patch, geometry=observed_geometry),
                             sigma, model.factor, model.grid_shape, generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.init in ("spectral", "auto"):
        model.set_psfs(fit_gaussians(target, model.size))
    return target


def blind_or_spectral(cfg: LearnOperatorConfig, ctx: StageContext, model: LearnableOperator, task: str,
                      observed: list[torch.Tensor], spectral: SpectralTarget | None) -> dict[str, float]:
    """init 'blind': the model starts from the blind kernel; 'auto': from the blind kernel or the
    spectral Gaussian, whichever fits the sets' spectra better (a Gaussian-like blur is the
    Gaussian's; a motion blur, whose spectrum no Gaussian fits, the blind one's). -> the start's
    scores (metrics init/*)."""
    if cfg.init not in ("blind", "auto"):
        return {}
    side, note = blind_side(observed, model.size)
    if note:
        warn(ctx, f"learn_operator.{task}: {note}", "ddmops.warning.blind")
    blind = blind_kernel(gray_tiles(observed, side, BLIND_TILES, torch.Generator().manual_seed(cfg.seed)),
                         model.size)[None].float()
    if cfg.init == "blind":
        model.set_psfs(blind)
        return {}
    losses = {"init/spectral_loss_gaussian": spectral_loss(model.kernels().detach(), spectral).item(),
              "init/spectral_loss_blind": spectral_loss(blind, spectral).item()}
    chose_blind = losses["init/spectral_loss_blind"] < losses["init/spectral_loss_gaussian"]
    if chose_blind:
        model.set_psfs(blind)
    ctx.tracker.set_tags({"ddmops.init": "blind" if chose_blind else "spectral"})
    return losses | {"init/blind": float(chose_blind)}


def blind_side(images: list[torch.Tensor], size: int) -> tuple[int, str | None]:
    """The side of the observed tiles the blind start reads for a ``size`` px kernel: 64 px or 4
    kernel widths where the images (C, H, W) allow (the kernel step reads the centre, side - size
    + 1 px); with a warning where they hold less than 4 kernel widths."""
    have = min(min(y.shape[-2:]) for y in images)
    side = min(max(64, 4 * size), have)
    if side < size + 16:
        raise ValueError(f"learn_operator init 'blind': observed images of {have} px are too small for a "
                         f"{size} px kernel (at least {size + 16} px)")
    if side < 4 * size:
        return side, (f"the blind start reads observed tiles of {side} px, under the 4 kernel widths "
                      f"({4 * size} px) it wants for a {size} px kernel (the kernel step sees {side - size + 1} px "
                      "of each): cut larger tiles (prepare.tile_size, or degrade.observations.tile_size for a "
                      "device's photos)")
    return side, None


def warn(ctx: StageContext, note: str, tag: str = "ddmops.warning") -> None:
    """A warning on stderr and as a tag of the stage's run."""
    print(f"warning: {note}", file=sys.stderr, flush=True)
    ctx.tracker.set_tags({tag: note})
