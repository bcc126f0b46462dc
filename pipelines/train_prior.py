"""Stage `train-prior@<domain>`: a flow-matching prior of one data domain.

`clean` is the image prior used for restoration; `deblur`, `psf_grid` and `sr_kernel` are
DDM4IP step 1: the prior of that task's observations, which `learn-operator` matches.
Priors with position channels train on crops that carry their field positions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddmops.config import PriorConfig
from ddmops.data import PatchSampler, load_geometry, load_image_set
from ddmops.errors import DataError
from ddmops.flow.train import train_prior
from ddmops.io import read_json, save_png
from ddmops.plots import mosaic
from pipelines.context import StageContext


def domain_files(ctx: StageContext, domain: str) -> tuple[Path, Path]:
    """(training set, held-out set) of a domain."""
    if domain == "clean":
        return ctx.ws.prepared("clean"), ctx.ws.prepared("test")
    return ctx.ws.observed(domain, "train"), ctx.ws.observed(domain, "test")


def run(cfg: PriorConfig, ctx: StageContext, domain: str) -> dict[str, float]:
    train_file, val_file = domain_files(ctx, domain)
    meta = read_json(ctx.ws.prepared("meta"))
    sigma = 0.0 if domain == "clean" else read_json(ctx.ws.observed(domain, "meta"))["noise_sigma"]
    sampler = PatchSampler(load_image_set(train_file), cfg.patch_size, flips=cfg.flips,
                           geometry=load_geometry(train_file))
    val, val_pos = _val_patches(val_file, cfg, domain)
    out = ctx.ws.prior(domain)

    def on_samples(x: torch.Tensor, images_seen: int) -> None:
        picture = mosaic(x)
        save_png(out.parent / "samples.png", picture)  # the last one stays as the stage's output
        ctx.tracker.log_image(picture, f"samples/{images_seen:09d}.png")

    prior, result = train_prior(
        cfg, sampler, val, img_channels=meta["channels"], device=ctx.device, tracker=ctx.tracker,
        checkpoint=ctx.ws.checkpoint(f"train-prior-{domain}"), run_key=ctx.run_key,
        on_samples=on_samples, progress=ctx.progress, dist=ctx.dist, val_positions=val_pos, nan_policy=ctx.nan_policy,
        meta={"domain": domain, "patch_size": cfg.patch_size, "noise_sigma": sigma})
    if ctx.dist.is_main:
        prior.save(out)
        ctx.tracker.log_artifact(out, "model")
    return {"loss/train": result.train_loss, "loss/val": result.val_loss, "train/steps": result.steps,
            "train/images": result.images, "train/seconds": result.seconds,
            "speed/images_per_sec": result.images_per_sec, "model/parameters": result.parameters}


def _val_patches(path: Path, cfg: PriorConfig, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cfg.eval_patches fixed crops of the held-out images of this domain, with positions."""
    images = load_image_set(path)
    if min(min(x.shape[-2:]) for x in images) < cfg.patch_size:
        raise DataError(f"held-out {domain} images are smaller than train_prior.{domain}.patch_size="
                        f"{cfg.patch_size}: raise prepare.test_size")
    sampler = PatchSampler(images, cfg.patch_size, geometry=load_geometry(path))
    return sampler.sample_with_position(cfg.eval_patches, torch.Generator().manual_seed(0))
