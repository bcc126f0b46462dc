"""Image sets: source photos, synthetic degradation, prepared sets on disk, patch sampling.

In memory an image is a float tensor (C, H, W) in [-1, 1]; on disk clean images are
uint8 and degraded ones float32 (their noise is not quantised).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddmops.config import KernelSpec
from ddmops.errors import DataError
from ddmops.io import iter_npz, list_images, read_image, to_uint8
from ddmops.operators.blur import convolve
from ddmops.operators.kernels import gaussian_kernel, load_kernel, motion_kernel
from ddmops.operators.psf_grid import position_map

# Natural photos shipped inside the scikit-image wheel (no download); grey ones are
# replicated to RGB. The motorcycle stereo pair counts as one scene.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry",
                  "camera", "coins", "moon", "brick", "grass", "gravel", "clock")


def source_images(source: str | Path, channels: int, max_side: int) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 (H, W, channels)) for every photo of ``source`` ('' = scikit-image's)."""
    if not source:
        import skimage.data
        images = [(n, to_uint8(getattr(skimage.data, n)() if n != "motorcycle_left"
                               else skimage.data.stereo_motorcycle()[0], channels)) for n in SKIMAGE_PHOTOS]
    else:
        images = [(p.name, read_image(p, channels)) for p in list_images(Path(source))]
    return [(name, downscale(img, max_side)) for name, img in images]


def downscale(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    pil = Image.fromarray(img.squeeze(-1) if img.shape[2] == 1 else img)
    out = np.asarray(pil.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS))
    return out[..., None] if out.ndim == 2 else out


def resolve_path(path: str | Path, root: Path) -> Path:
    """``path`` as given if absolute, else relative to the workspace ``root``."""
    return Path(path) if Path(path).is_absolute() else Path(root) / path


def make_kernel(spec: KernelSpec, root: Path) -> torch.Tensor:
    """The (K, K) kernel a :class:`KernelSpec` describes."""
    if spec.kind == "gaussian":
        return gaussian_kernel(spec.size, spec.std, spec.angle)
    if spec.kind == "motion":
        g = torch.Generator().manual_seed(spec.seed)
        return motion_kernel(spec.size, spec.intensity, g)
    return load_kernel(resolve_path(spec.path, root), spec.index)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float (C, H, W) in [-1, 1]."""
    return torch.tensor(img).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_image(x: torch.Tensor) -> np.ndarray:
    """float (C, H, W) in [-1, 1] -> uint8 (H, W, C) (clipped)."""
    return (x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round()
            .to(torch.uint8).permute(1, 2, 0).numpy())


def degrade(x: torch.Tensor, kernel: torch.Tensor, sigma: float, generator: torch.Generator,
            padding: str = "valid") -> torch.Tensor:
    """y = k * x + sigma n. x: (B, C, H, W) -> (B, C, H-K+1, W-K+1) for 'valid'."""
    y = convolve(x, kernel.to(x), padding)
    return y + sigma * torch.randn(y.shape, generator=generator).to(y)


def save_image_set(images: list[torch.Tensor], quantise: bool,
                   geometry: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Arrays for :func:`ddmops.io.save_npz`: uint8 (H, W, C) or float32 (C, H, W) images,
    and optionally each image's place (top, left, full_h, full_w) in its source photo."""
    arrays = {f"img_{i:05d}": (to_image(x) if quantise else x.float().numpy()) for i, x in enumerate(images)}
    if geometry is not None:
        arrays["geometry"] = geometry.double().numpy()
    return arrays


def load_image_set(path: Path) -> list[torch.Tensor]:
    """Inverse of :func:`save_image_set`: a list of (C, H, W) in [-1, 1]."""
    out = [to_tensor(a) if a.dtype == np.uint8 else torch.from_numpy(np.ascontiguousarray(a))
           for key, a in iter_npz(path) if key.startswith("img_")]
    if not out:
        raise DataError(f"{path}: the image set is empty")
    return out


def load_geometry(path: Path) -> torch.Tensor | None:
    """(N, 4) (top, left, full_h, full_w) of an image set, if it was saved with one."""
    for key, a in iter_npz(path):
        if key == "geometry":
            return torch.from_numpy(a)
    return None


def tiles(x: torch.Tensor, size: int) -> list[tuple[torch.Tensor, tuple[float, float, float, float]]]:
    """Non-overlapping (C, size, size) tiles of x with their place in it (the remainder at
    the borders is dropped)."""
    h, w = x.shape[-2:]
    return [(x[:, r:r + size, c:c + size].clone(), (float(r), float(c), float(h), float(w)))
            for r in range(0, h - size + 1, size) for c in range(0, w - size + 1, size)]


def held_out_crops(images: list[torch.Tensor], n: int, size: int,
                g: torch.Generator) -> list[tuple[torch.Tensor, tuple[float, float, float, float]]]:
    """n crops of (C, size, size), spread over the test images in turn, with their places."""
    crops = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[-2:]
        r = int(torch.randint(0, h - size + 1, (1,), generator=g))
        c = int(torch.randint(0, w - size + 1, (1,), generator=g))
        crops.append((img[:, r:r + size, c:c + size].clone(), (float(r), float(c), float(h), float(w))))
    return crops


class PatchSampler:
    """Random square crops (optionally flipped) from a list of (C, H, W) images.

    Images are drawn with probability proportional to their number of crop positions,
    so every crop of the collection is equally likely. ``geometry`` gives, per image, its
    place (top, left, full_h, full_w) in the photo it was cut from, so crops can carry
    their field positions (PSF grids); flips change the content, not the positions.
    """

    def __init__(self, images: list[torch.Tensor], patch_size: int, flips: bool = False,
                 geometry: torch.Tensor | None = None):
        small = [i for i, x in enumerate(images) if min(x.shape[-2:]) < patch_size]
        if small:
            shape = tuple(images[small[0]].shape[-2:])
            raise DataError(f"{len(small)} image(s) are smaller than the patch size {patch_size} "
                            f"(e.g. image #{small[0]} of size {shape})")
        self.images, self.patch_size, self.flips, self.geometry = images, patch_size, flips, geometry
        counts = torch.tensor([(x.shape[-2] - patch_size + 1) * (x.shape[-1] - patch_size + 1)
                               for x in images], dtype=torch.float64)
        self.weights = counts / counts.sum()

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """-> crops (batch, C, P, P)"""
        return self._draw(batch, generator, False)[0]

    def sample_with_position(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """-> crops (batch, C, P, P) and their field positions (batch, 2, P, P)"""
        return self._draw(batch, generator, True)

    def _draw(self, batch: int, generator: torch.Generator, with_position: bool):
        p = self.patch_size
        idx = torch.multinomial(self.weights, batch, replacement=True, generator=generator)
        u = torch.rand(batch, 4, generator=generator)
        crops, positions = [], []
        for i, (ur, uc, fh, fv) in zip(idx.tolist(), u.tolist()):
            img = self.images[i]
            r = int(ur * (img.shape[-2] - p + 1))
            c = int(uc * (img.shape[-1] - p + 1))
            crop = img[:, r:r + p, c:c + p]
            if self.flips and fh < 0.5:
                crop = crop.flip(-1)
            if self.flips and fv < 0.5:
                crop = crop.flip(-2)
            crops.append(crop)
            if with_position:
                top, left, full_h, full_w = (self.geometry[i].tolist() if self.geometry is not None
                                             else (0.0, 0.0, img.shape[-2], img.shape[-1]))
                positions.append(position_map(p, p, top + r, left + c, full_h, full_w))
        return torch.stack(crops), (torch.stack(positions) if with_position else None)
