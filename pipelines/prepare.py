"""Stage `prepare`: unpaired clean / degraded image sets and a paired test set.

Source photos are split (seeded): some are held out for testing (crops kept with their
degraded versions, so restoration and kernel recovery can be scored); the others, whole
or cut into tiles, are dealt at random to a clean set and to a degraded set, which is
blurred with a known kernel plus Gaussian noise. No pixel is in both sets: they are
unpaired, as DDM4IP requires.
"""

from __future__ import annotations

import torch

from ddmops.config import PrepareConfig
from ddmops.data import degrade, make_kernel, save_image_set, source_images, to_tensor
from ddmops.errors import DataError
from ddmops.io import list_images, save_array, save_npz, write_json
from ddmops.plots import image_row, kernels_side_by_side
from pipelines.context import StageContext

FILES = {"clean": "clean.npz", "degraded": "degraded.npz", "test_clean": "test_clean.npz",
         "test_degraded": "test_degraded.npz", "kernel": "kernel.npy", "meta": "meta.json"}


def _use_folder(cfg: PrepareConfig, ctx: StageContext) -> bool:
    if cfg.source != "auto":
        return cfg.source == "folder"
    folder = ctx.ws.path("source")
    try:
        return folder.is_dir() and bool(list_images(folder))
    except DataError:
        return False


def run(cfg: PrepareConfig, ctx: StageContext) -> dict[str, float]:
    out = ctx.ws.path("prepared")
    folder = _use_folder(cfg, ctx)
    photos = source_images(ctx.ws.path("source") if folder else "", cfg.channels, cfg.max_side)
    if len(photos) < 2:
        raise DataError(f"{ctx.ws.path('source')}: need at least 2 images (test images are held out), "
                        f"found {len(photos)}")
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(photos), generator=g).tolist()
    n_test = min(len(photos) - 1, max(1, round(cfg.test_fraction * len(photos))))
    test_idx, train_idx = order[:n_test], order[n_test:]
    kernel = make_kernel(cfg.kernel, ctx.ws.root)
    ksize = kernel.shape[-1]

    pieces = [to_tensor(photos[i][1]) for i in train_idx]
    if cfg.split == "tiles":
        pieces = [t for x in pieces for t in _tiles(x, cfg.tile_size)]
    if len(pieces) < 2:
        raise DataError(f"the training images give {len(pieces)} piece(s); clean and degraded sets need "
                        "one each (use more images or a smaller prepare.tile_size)")
    if min(min(x.shape[-2:]) for x in pieces) <= ksize:
        raise DataError(f"a training image is not larger than the kernel ({ksize} px): raise prepare.max_side")
    perm = torch.randperm(len(pieces), generator=g).tolist()
    n_clean = min(len(pieces) - 1, max(1, round(cfg.clean_fraction * len(pieces))))
    clean = [pieces[i] for i in perm[:n_clean]]
    degraded = [degrade(pieces[i][None], kernel, cfg.noise_sigma, g)[0] for i in perm[n_clean:]]
    test_clean = _test_crops([to_tensor(photos[i][1]) for i in test_idx], cfg.test_crops, cfg.test_size, g)
    test_degraded = [degrade(x[None], kernel, cfg.noise_sigma, g)[0] for x in test_clean]

    save_npz(out / FILES["clean"], save_image_set(clean, quantise=True))
    save_npz(out / FILES["degraded"], save_image_set(degraded, quantise=False))
    save_npz(out / FILES["test_clean"], save_image_set(test_clean, quantise=True))
    save_npz(out / FILES["test_degraded"], save_image_set(test_degraded, quantise=False))
    save_array(out / FILES["kernel"], kernel.numpy())
    write_json(out / FILES["meta"], {
        "noise_sigma": cfg.noise_sigma, "channels": cfg.channels, "kernel_size": ksize, "padding": "valid",
        "source": str(ctx.ws.path("source")) if folder else "scikit-image", "split": cfg.split,
        "images": {"test": [photos[i][0] for i in test_idx], "train": [photos[i][0] for i in train_idx]},
    })
    ctx.tracker.log_image(kernels_side_by_side({"true kernel": kernel}), "kernel_true.png")
    ctx.tracker.log_image(image_row({"test clean": test_clean[0], "test degraded": test_degraded[0]}),
                          "test_example.png")
    return {"data/clean_images": len(clean), "data/degraded_images": len(degraded),
            "data/test_images": len(test_clean), "data/clean_pixels": sum(x[0].numel() for x in clean),
            "data/degraded_pixels": sum(x[0].numel() for x in degraded)}


def _tiles(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Non-overlapping (C, size, size) tiles of x (the remainder at the borders is dropped)."""
    h, w = x.shape[-2:]
    return [x[:, r:r + size, c:c + size].clone() for r in range(0, h - size + 1, size)
            for c in range(0, w - size + 1, size)]


def _test_crops(images: list[torch.Tensor], n: int, size: int, g: torch.Generator) -> list[torch.Tensor]:
    """n crops of (C, size, size), spread over the test images in turn."""
    crops = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[-2:]
        if min(h, w) < size:
            raise DataError(f"test image of size {h}x{w} is smaller than prepare.test_size={size}")
        r = int(torch.randint(0, h - size + 1, (1,), generator=g))
        c = int(torch.randint(0, w - size + 1, (1,), generator=g))
        crops.append(img[:, r:r + size, c:c + size].clone())
    return crops
