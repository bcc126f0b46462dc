"""Stage `degrade@<task>`: the task's observations, synthesised or real.

Synthesised: the pieces set aside by `prepare` through the task's unknown forward model plus
Gaussian noise, and the same for the test images; the truth (kernel, PSF grid or SR kernel) is
kept only to score what `learn-operator` recovers (learning never reads it).

Real (``degrade.<task>.observed`` names a folder of a device's photos): they are cut into tiles
and held-out test crops at their native resolution, never resized; the noise level is
``degrade.observations.noise_sigma`` or estimated from them (ddmops/noise.py); no truth exists.

Observations keep their places in their photos (field positions for PSF grids).
"""

from __future__ import annotations

import torch

from ddmops.config import DegradeConfig
from ddmops.data import (held_out_crops, load_geometry, load_image_set, observation_images, resolve_path,
                         save_image_set, tiles)
from ddmops.ddm4ip.truth import true_operator
from ddmops.errors import DataError
from ddmops.io import read_json, save_npz, write_json
from ddmops.noise import estimate_noise
from ddmops.operators.psf_grid import position_map
from ddmops.operators.psf_operator import FAMILY_OF_TASK, PsfOperator
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
    if getattr(cfg, task).observed:
        return real(cfg, ctx, task)
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


def real(cfg: DegradeConfig, ctx: StageContext, task: str) -> dict[str, float]:
    """Tiles and test crops of the task's folder of real observations; no truth."""
    spec, obs = getattr(cfg, task), cfg.observations
    folder = resolve_path(spec.observed, ctx.ws.root)
    photos = observation_images(folder, read_json(ctx.ws.prepared("meta"))["channels"])
    need = max(obs.tile_size, obs.test_size)
    h, w = photos[0][1].shape[-2:]
    if min(h, w) < need:
        raise DataError(f"{folder}: observations of {h}x{w} are smaller than degrade.observations.tile_size / "
                        f"test_size ({need} px)")
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(photos), generator=g).tolist()
    n_test = min(len(photos) - 1, max(1, round(obs.test_fraction * len(photos))))
    test, train = [photos[i] for i in order[:n_test]], [photos[i] for i in order[n_test:]]
    sets = {"train": [t for _, x in train for t in tiles(x, obs.tile_size)],
            "test": held_out_crops([x for _, x in test], obs.test_crops, obs.test_size, g)}
    sigma = obs.noise_sigma if obs.noise_sigma is not None else estimate_noise([x for _, x in train])
    for name, items in sets.items():
        geometry = torch.tensor([p[1] for p in items], dtype=torch.float64)
        save_npz(ctx.ws.observed(task, name), save_image_set([p[0] for p in items], quantise=False, geometry=geometry))
    ctx.ws.observed(task, "truth").unlink(missing_ok=True)  # a synthetic run's, from before
    write_json(ctx.ws.observed(task, "meta"), {
        "task": task, "family": FAMILY_OF_TASK[task].family, "noise_sigma": sigma,
        "noise_estimated": obs.noise_sigma is None, "observed": ctx.ws.key(folder),
        "images": {"train": [n for n, _ in train], "test": [n for n, _ in test]}})
    ctx.tracker.log_image(image_row({"observation": sets["test"][0][0].clamp(-1, 1)}), f"{task}_observation.png")
    return {"data/degraded_images": len(sets["train"]), "data/degraded_pixels": sum(x[0].numel() for x, _ in sets["train"]),
            "data/observed_photos": len(photos), "noise/sigma": sigma}
