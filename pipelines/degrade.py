"""Stage `degrade@<task>`: observations of the pieces set aside by `prepare`, through the
task's unknown forward model plus Gaussian noise, and the same for the test images.

The truth (kernel, PSF grid or SR kernel) is kept only to score what `learn-operator`
recovers; learning never reads it. Observations keep their places in their photos.
"""

from __future__ import annotations

import torch

from ddmops.config import DegradeConfig
from ddmops.data import load_geometry, load_image_set, save_image_set
from ddmops.ddm4ip.truth import true_operator
from ddmops.io import save_npz, write_json
from ddmops.operators.psf_grid import position_map
from ddmops.operators.psf_operator import PsfOperator
from ddmops.plots import image_row
from pipelines.context import StageContext


def observe(images: list[torch.Tensor], geometry: torch.Tensor, truth: PsfOperator, sigma: float,
            g: torch.Generator) -> list[torch.Tensor]:
    """A(x) + sigma n for each image (C, H, W) at its place (top, left, full_h, full_w)."""
    out = []
    for x, (top, left, full_h, full_w) in zip(images, geometry.tolist()):
        pos = position_map(*x.shape[-2:], top, left, full_h, full_w)[None]
        with torch.no_grad():
            y = truth.operator(pos).A(x[None])[0]
        out.append(y + sigma * torch.randn(y.shape, generator=g))
    return out


def run(cfg: DegradeConfig, ctx: StageContext, task: str) -> dict[str, float]:
    truth = true_operator(task, cfg, ctx.ws.root)
    g = torch.Generator().manual_seed(cfg.seed)
    counts = {}
    for observed, source in (("train", "to_degrade"), ("test", "test")):
        images, geometry = load_image_set(ctx.ws.prepared(source)), load_geometry(ctx.ws.prepared(source))
        ys = observe(images, geometry, truth, cfg.noise_sigma, g)
        save_npz(ctx.ws.observed(task, observed),
                 save_image_set(ys, quantise=False, geometry=truth.output_geometry(geometry)))
        counts[observed] = ys
    truth.save(ctx.ws.observed(task, "truth"))
    write_json(ctx.ws.observed(task, "meta"), {"task": task, "family": truth.family, "noise_sigma": cfg.noise_sigma})
    ctx.tracker.log_image(truth.picture(label="truth"), f"{task}_truth.png")
    ctx.tracker.log_image(image_row({"test observation": counts["test"][0].clamp(-1, 1)}), f"{task}_observation.png")
    return {"data/degraded_images": len(counts["train"]),
            "data/degraded_pixels": sum(y[0].numel() for y in counts["train"])}
