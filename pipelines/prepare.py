"""Stage `prepare`: the clean set, the pieces to degrade, and the held-out test images.

Source photos are split (seeded): some are held out for testing (crops, degraded later
alongside so restoration and operator recovery can be scored); the others, whole or cut
into tiles, are dealt at random to the clean set or to the pieces that each DDM4IP task
degrades with its own unknown operator (stage `degrade`). No pixel is in both: clean and
degraded sets are unpaired, as DDM4IP requires. Every piece keeps its place in its photo
(top, left, full height, full width) for field-dependent operators.
"""

from __future__ import annotations

import torch

from ddmops.config import PrepareConfig
from ddmops.data import held_out_crops, save_image_set, source_images, tiles, to_tensor
from ddmops.errors import DataError
from ddmops.io import list_images, save_npz, write_json
from ddmops.plots import mosaic
from pipelines.context import StageContext


def _use_folder(cfg: PrepareConfig, ctx: StageContext) -> bool:
    if cfg.source != "auto":
        return cfg.source == "folder"
    folder = ctx.ws.path("source")
    try:
        return folder.is_dir() and bool(list_images(folder))
    except DataError:
        return False


def run(cfg: PrepareConfig, ctx: StageContext) -> dict[str, float]:
    folder = _use_folder(cfg, ctx)
    photos = source_images(ctx.ws.path("source") if folder else "", cfg.channels, cfg.max_side)
    if len(photos) < 2:
        raise DataError(f"{ctx.ws.path('source')}: need at least 2 images (test images are held out), "
                        f"found {len(photos)}")
    need = max(cfg.test_size, cfg.tile_size if cfg.split == "tiles" else 0)
    for name, img in photos:
        if min(img.shape[:2]) < need:
            raise DataError(f"{name}: {img.shape[0]}x{img.shape[1]} is smaller than {need}px "
                            "(prepare.test_size / prepare.tile_size); remove it or lower those params")
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(photos), generator=g).tolist()
    n_test = min(len(photos) - 1, max(1, round(cfg.test_fraction * len(photos))))
    test_idx, train_idx = order[:n_test], order[n_test:]

    pieces: list[tuple[torch.Tensor, tuple[float, float, float, float]]] = []
    for i in train_idx:
        x = to_tensor(photos[i][1])
        pieces += tiles(x, cfg.tile_size) if cfg.split == "tiles" else [(x, (0.0, 0.0, *x.shape[-2:]))]
    if len(pieces) < 2:
        raise DataError(f"the training images give {len(pieces)} piece(s); clean and degraded sets need "
                        "one each (use more images or a smaller prepare.tile_size)")
    perm = torch.randperm(len(pieces), generator=g).tolist()
    n_clean = min(len(pieces) - 1, max(1, round(cfg.clean_fraction * len(pieces))))
    sets = {"clean": [pieces[i] for i in perm[:n_clean]], "to_degrade": [pieces[i] for i in perm[n_clean:]],
            "test": held_out_crops([to_tensor(photos[i][1]) for i in test_idx], cfg.test_crops, cfg.test_size, g)}
    for name, items in sets.items():
        images, geometry = [p[0] for p in items], torch.tensor([p[1] for p in items], dtype=torch.float64)
        save_npz(ctx.ws.prepared(name), save_image_set(images, quantise=True, geometry=geometry))
    write_json(ctx.ws.prepared("meta"), {
        "channels": cfg.channels, "source": str(ctx.ws.path("source")) if folder else "scikit-image",
        "split": cfg.split, "images": {"test": [photos[i][0] for i in test_idx],
                                       "train": [photos[i][0] for i in train_idx]},
    })
    ctx.tracker.log_image(mosaic(torch.stack([p[0] for p in sets["test"]])), "test_images.png")
    return {"data/clean_images": len(sets["clean"]), "data/degraded_images": len(sets["to_degrade"]),
            "data/test_images": len(sets["test"]),
            "data/clean_pixels": sum(p[0][0].numel() for p in sets["clean"]),
            "data/degraded_pixels": sum(p[0][0].numel() for p in sets["to_degrade"])}
