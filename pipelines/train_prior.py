"""Stage `train-prior`: a flow-matching prior for one domain.

`degraded` is DDM4IP step 1 (the prior of the observations, used to learn the
operator); `clean` is the image prior used for restoration.
"""

from __future__ import annotations

import torch

from ddmops.config import PriorConfig
from ddmops.data import PatchSampler, load_image_set
from ddmops.errors import DataError
from ddmops.flow.train import train_prior
from ddmops.io import read_json, save_png
from ddmops.plots import mosaic
from pipelines.context import StageContext
from pipelines.prepare import FILES

PRIOR_FILE = "prior.safetensors"


def run(cfg: PriorConfig, ctx: StageContext, domain: str) -> dict[str, float]:
    prepared = ctx.ws.path("prepared")
    meta = read_json(prepared / FILES["meta"])
    images = load_image_set(prepared / FILES[domain])
    sampler = PatchSampler(images, cfg.patch_size, flips=cfg.flips)
    val = _val_patches(load_image_set(prepared / FILES[f"test_{domain}"]), cfg, domain)
    out = ctx.ws.path("priors", domain)
    checkpoint = ctx.ws.path("checkpoints", f"train-prior-{domain}.pt")

    def on_samples(x: torch.Tensor, images_seen: int) -> None:
        picture = mosaic(x)
        save_png(out / "samples.png", picture)  # the last one stays as the stage's output
        ctx.tracker.log_image(picture, f"samples/{images_seen:09d}.png")

    prior, result = train_prior(
        cfg, sampler, val, img_channels=meta["channels"], device=ctx.device, tracker=ctx.tracker,
        checkpoint=checkpoint, run_key=ctx.run_key, on_samples=on_samples, progress=ctx.progress,
        meta={"domain": domain, "patch_size": cfg.patch_size, "noise_sigma": meta["noise_sigma"]}, dist=ctx.dist)
    if ctx.dist.is_main:
        prior.save(out / PRIOR_FILE)
        ctx.tracker.log_artifact(out / PRIOR_FILE, "model")
    return {"loss/train": result.train_loss, "loss/val": result.val_loss, "train/steps": result.steps,
            "train/images": result.images, "train/seconds": result.seconds,
            "speed/images_per_sec": result.images_per_sec, "model/parameters": result.parameters}


def _val_patches(images: list[torch.Tensor], cfg: PriorConfig, domain: str) -> torch.Tensor:
    """cfg.eval_patches fixed crops of the held-out test images of this domain."""
    if min(min(x.shape[-2:]) for x in images) < cfg.patch_size:
        raise DataError(f"held-out {domain} test images are smaller than train_prior.{domain}.patch_size="
                        f"{cfg.patch_size}: raise prepare.test_size")
    return PatchSampler(images, cfg.patch_size).sample(cfg.eval_patches, torch.Generator().manual_seed(0))
