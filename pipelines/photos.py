"""`ddmops restore`: a user's own photos, any size, restored with an operator and the clean prior.

Each photo is the whole field of its device (PSF grids are read at its pixels' field positions),
restored by DDM4IP step 3's method (``invert.<task>`` of params.yaml for the operator's task; the
prior sees large photos as blended tiles) and written at the input's size, name and bit depth
(8-bit PNG, 16-bit TIFF; an SR operator's output is ``factor`` times larger). Writes are atomic
and a manifest in the output folder records what each output was made from: a rerun skips what
is done and redoes only what is missing or stale. Unreadable inputs are reported by name once the
readable ones are done.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ddmops.config import InvertConfig
from ddmops.errors import DataError, DdmopsError
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.methods import invert
from ddmops.io import IMAGE_SUFFIXES, list_images, read_image_float, write_image, write_json
from ddmops.metrics import residual_ratio
from ddmops.noise import estimate_noise
from ddmops.operators.psf_grid import position_map
from ddmops.operators.psf_operator import PsfOperator
from ddmops.ops.hashing import config_digest
from ddmops.tracker import Tracker

MANIFEST = ".ddmops-restore.json"
# What an operator cannot explain in a real photo, as a noise std in [-1, 1] units: a PSF acts on
# linear light but photos are gamma-encoded (the sRGB-domain blur of a true PSF misses BSDS500
# device photos by 0.03-0.06), compression, and the error of a learned PSF.
MODEL_ERROR = 0.04


@dataclass(frozen=True)
class PhotoJob:
    """What `ddmops restore` was asked for."""

    inputs: tuple[Path, ...]  # image files and folders (searched recursively)
    out: Path
    method: str = "pnp"
    tile: int = 0  # > 0: the prior sees larger photos as blended tiles of this side (default: auto_tile)
    noise_sigma: float | None = None  # None: estimated per photo (ddmops/noise.py)
    model_error: float = MODEL_ERROR
    seed: int = 0

    def trusted_sigma(self, noise: float) -> float:
        """The noise level the data term trusts: the sensor noise and the model's error in quadrature."""
        return math.hypot(noise, self.model_error)


def auto_tile(prior: FlowPrior) -> int:
    """Twice the side the prior was trained on (0: whole photos when the prior does not say)."""
    return 2 * int(prior.meta.get("patch_size", 0))


@dataclass(frozen=True)
class PhotoResult:
    written: list[Path]
    skipped: list[Path]  # restored by an earlier run with the same settings
    failed: dict[str, str]  # input -> why
    seconds_per_megapixel: float
    residual: float  # mean rms(y - A x) / trusted sigma over the restored photos (1: explained to that level)


def expand(inputs: tuple[Path, ...]) -> list[Path]:
    """Files as given; folders as the images under them (sorted)."""
    out = []
    for path in inputs:
        out += list_images(path) if Path(path).is_dir() else [Path(path)]
    return out


def check_photos(inputs: tuple[Path, ...], out: Path) -> list[Path]:
    """The photos of ``inputs``, refused before anything runs when there are none, when two share a
    name (outputs keep the names), or when the output folder ``out`` lies inside an input folder or
    is where an input photo is."""
    where = out.resolve()
    for path in inputs:
        p = Path(path).resolve()
        folder = p if p.is_dir() else p.parent
        if where == folder or where.is_relative_to(folder) and p.is_dir():
            raise DdmopsError(f"--out {out}: inside the inputs ({path}); restored photos would mix with (or "
                              "overwrite) the originals: choose a folder outside them")
    photos = expand(inputs)
    if not photos:
        raise DdmopsError(f"no images among {', '.join(map(str, inputs))} ({', '.join(sorted(IMAGE_SUFFIXES))})")
    names = [p.name for p in photos]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DdmopsError(f"two inputs are named {dup}: outputs keep the input names, so they would collide")
    return photos


def output_name(photo: Path, depth: int) -> str:
    return photo.with_suffix(".png" if depth == 8 else ".tif").name


def restore_photos(job: PhotoJob, photos: list[Path], digests: dict[str, str], operator: PsfOperator,
                   prior: FlowPrior, cfg: InvertConfig, tracker: Tracker, device: torch.device, settings: dict,
                   on_photo: Callable[[int, int, str], None] = lambda *a: None) -> PhotoResult:
    """Restore every readable photo of ``photos`` (from :func:`check_photos`; ``digests``: the MD5 of
    each that is a file); ``settings`` (what the outputs depend on besides the input: operator,
    prior, method, ...) key the manifest, so changed settings redo the photos."""
    cfg = dataclasses.replace(cfg, method=job.method)
    key = config_digest(settings, job.method, job.tile, job.noise_sigma, job.model_error, job.seed)
    manifest_file = job.out / MANIFEST
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    prior.tile = job.tile
    channels = prior.arch.img_channels
    written, skipped, failed, pixels, seconds, residuals = [], [], {}, 0, 0.0, []
    for i, photo in enumerate(photos):
        on_photo(i, len(photos), photo.name)
        try:
            image, depth = read_image_float(photo, channels=0)
            if image.shape[2] != channels:
                raise DataError(f"{photo}: a {image.shape[2]}-channel image; the prior restores {channels}-channel "
                                "ones (train one on such photos: prepare.channels)")
            digest = digests[str(photo)]
            target = job.out / output_name(photo, depth)
            done = manifest.get(photo.name, {})
            if target.is_file() and done.get("input") == digest and done.get("settings") == key:
                skipped.append(target)
                continue
            t0 = time.perf_counter()
            x, residual, noise, sigma = restore_one(image, operator, prior, cfg, device, job)
            seconds += time.perf_counter() - t0
            pixels += image.shape[0] * image.shape[1]
            residuals.append(residual)
            written.append(write_image(target, x, depth))
            manifest[photo.name] = {"input": digest, "settings": key, "output": target.name, "noise_sigma": noise,
                                    "trusted_sigma": sigma, "residual": residual}
            write_json(manifest_file, manifest)  # after the photo: an interrupted run redoes only the rest
            tracker.log_metrics({"noise_sigma": noise, "residual": residual}, step=i)
        except DataError as exc:
            failed[str(photo)] = str(exc)
    mean = sum(residuals) / len(residuals) if residuals else float("nan")
    return PhotoResult(written, skipped, failed, seconds / (pixels / 1e6) if pixels else 0.0, mean)


def restore_one(image, operator: PsfOperator, prior: FlowPrior, cfg: InvertConfig, device: torch.device,
                job: PhotoJob) -> tuple:
    """One photo (H, W, C) in [0, 1] -> (restoration (H', W', C) in [0, 1], residual ratio, the photo's
    noise level, the noise level the data term trusted)."""
    y = torch.from_numpy(image).permute(2, 0, 1)[None].float() * 2 - 1  # (1, C, H, W) in [-1, 1]
    noise = job.noise_sigma if job.noise_sigma is not None else estimate_noise([y[0]])
    sigma = max(job.trusted_sigma(noise), 1e-3)
    h, w = y.shape[-2:]
    full = torch.tensor([[0.0, 0.0, float(h), float(w)]], dtype=torch.float64)  # the photo is the whole field
    x_geom = operator.input_geometry(full)
    size = operator.input_size((h, w))
    top, left = x_geom[0, :2].tolist()
    position = position_map(*size, top, left, *x_geom[0, 2:].tolist())[None]
    op = operator.operator(position).to(device)
    g = torch.Generator(device=device).manual_seed(job.seed)
    with torch.no_grad():
        x = invert(cfg, y.to(device), op, prior, sigma=sigma, generator=g)
        residual = residual_ratio(y.to(device), op.A(x), sigma).item()
    # back to the photo's own frame (s times larger for SR): the part of x the observation covers
    s = operator.factor
    r, c = round(-top), round(-left)
    x = x[0, :, r:r + s * h, c:c + s * w].cpu()
    return ((x.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(), residual, noise, sigma
