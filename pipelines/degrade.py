"""Stage `degrade@<task>`: observations of the pieces set aside by `prepare`, through the
task's unknown forward model plus Gaussian noise, and the same for the test images.

The truth (kernel, PSF grid or SR kernel) is kept only to score what `learn-operator`
recovers; learning never reads it. Observations keep their places in their photos.
"""

from __future__ import annotations

import torch

from ddmops.config import DegradeConfig
from ddmops.data import load_geometry, load_image_set, save_image_set
from ddmops.ddm4ip.families import FAMILY, build_operator, output_geometry, psf_stack, true_operator
from ddmops.io import save_npz, write_json
from ddmops.operators.psf_grid import position_map
from ddmops.plots import image_row, psf_mosaic
from pipelines.context import StageContext
from pipelines.prepare import FILES as PREPARED

FILES = {"degraded": "degraded.npz", "test_degraded": "test_degraded.npz", "truth": "truth.npz",
         "meta": "meta.json"}


def observe(images: list[torch.Tensor], geometry: torch.Tensor, arrays: dict, sigma: float,
            g: torch.Generator) -> list[torch.Tensor]:
    """A(x) + sigma n for each image (C, H, W) at its place (top, left, full_h, full_w)."""
    out = []
    for x, (top, left, full_h, full_w) in zip(images, geometry.tolist()):
        pos = position_map(*x.shape[-2:], top, left, full_h, full_w)[None]
        with torch.no_grad():
            y = build_operator(arrays, pos).A(x[None])[0]
        out.append(y + sigma * torch.randn(y.shape, generator=g))
    return out


def run(cfg: DegradeConfig, ctx: StageContext, task: str) -> dict[str, float]:
    prepared, out = ctx.ws.path("prepared"), ctx.ws.path("degraded", task)
    truth = true_operator(task, cfg, ctx.ws.root)
    g = torch.Generator().manual_seed(cfg.seed)
    counts = {}
    for name, source in (("degraded", "hidden"), ("test_degraded", "test_clean")):
        images, geometry = load_image_set(prepared / PREPARED[source]), load_geometry(prepared / PREPARED[source])
        ys = observe(images, geometry, truth, cfg.noise_sigma, g)
        save_npz(out / FILES[name], save_image_set(ys, quantise=False, geometry=output_geometry(truth, geometry)))
        counts[name] = ys
    save_npz(out / FILES["truth"], truth)
    write_json(out / FILES["meta"], {"task": task, "family": FAMILY[task], "noise_sigma": cfg.noise_sigma})
    grid = truth["psf_grid"].shape[:2] if "psf_grid" in truth else None
    ctx.tracker.log_image(psf_mosaic(psf_stack(truth), grid), f"{task}_truth.png")
    ctx.tracker.log_image(image_row({"test observation": counts["test_degraded"][0].clamp(-1, 1)}),
                          f"{task}_observation.png")
    return {"data/degraded_images": len(counts["degraded"]),
            "data/degraded_pixels": sum(y[0].numel() for y in counts["degraded"])}
