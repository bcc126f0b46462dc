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
from ddmops.io import iter_npz, list_images, read_image, read_image_float, to_uint8
from ddmops.operators.blur import convolve
from ddmops.operators.kernels import gaussian_kernel, load_kernel, motion_kernel

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


def observation_images(folder: Path, channels: int) -> list[tuple[str, torch.Tensor]]:
    """A device's observations at full bit depth and native size: (name, (C, H, W) in [-1, 1]).
    They must be at least two and of one size (one sensor); errors name the folder or file."""
    folder = Path(folder)
    paths = list_images(folder)
    if len(paths) < 2:
        raise DataError(f"{folder}: need at least 2 observed images (some are held out for testing), "
                        f"found {len(paths)}")
    images = []
    for p in paths:
        x, _ = read_image_float(p, channels)
        images.append((str(p.relative_to(folder)), torch.from_numpy(x).permute(2, 0, 1).float() * 2 - 1))
    sizes = {tuple(x.shape[-2:]) for _, x in images}
    if len(sizes) > 1:
        odd = next(name for name, x in images if tuple(x.shape[-2:]) != tuple(images[0][1].shape[-2:]))
        raise DataError(f"{folder}: observations of one device must share one size; {images[0][0]} is "
                        f"{'x'.join(map(str, images[0][1].shape[-2:]))}, {odd} is not (crop them alike, never resize)")
    return images


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

    The random draws come from the (CPU) generator; the crops are cut in one gather from the
    images stacked on the sampler's device (:meth:`to`), so the same generator gives the same
    crops on every device and a GPU is not kept waiting on a Python loop.
    """

    def __init__(self, images: list[torch.Tensor], patch_size: int, flips: bool = False,
                 geometry: torch.Tensor | None = None):
        small = [i for i, x in enumerate(images) if min(x.shape[-2:]) < patch_size]
        if small:
            shape = tuple(images[small[0]].shape[-2:])
            raise DataError(f"{len(small)} image(s) are smaller than the patch size {patch_size} "
                            f"(e.g. image #{small[0]} of size {shape})")
        self.patch_size, self.flips, self.geometry = patch_size, flips, geometry
        self.sizes = torch.tensor([tuple(x.shape[-2:]) for x in images], dtype=torch.long)  # (N, 2)
        counts = ((self.sizes[:, 0] - patch_size + 1) * (self.sizes[:, 1] - patch_size + 1)).double()
        self.weights = counts / counts.sum()
        h, w = self.sizes.max(0).values.tolist()
        self.stack = torch.zeros(len(images), images[0].shape[0], h, w, dtype=images[0].dtype)  # zero-padded
        for i, x in enumerate(images):
            self.stack[i, :, :x.shape[-2], :x.shape[-1]] = x
        self.places = (geometry.double() if geometry is not None else torch.cat(
            [torch.zeros(len(images), 2, dtype=torch.float64), self.sizes.double()], 1))  # (N, 4)

    @property
    def images(self) -> list[torch.Tensor]:
        """The images (C, H, W), as views into the stack."""
        return [self.stack[i, :, :h, :w] for i, (h, w) in enumerate(self.sizes.tolist())]

    def to(self, device: torch.device | str) -> "PatchSampler":
        """Keep the images on ``device`` (crops come out there); returns this sampler."""
        self.stack = self.stack.to(device)
        return self

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """-> crops (batch, C, P, P)"""
        return self._draw(batch, generator, False)[0]

    def sample_with_position(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """-> crops (batch, C, P, P) and their field positions (batch, 2, P, P)"""
        return self._draw(batch, generator, True)

    def _draw(self, batch: int, generator: torch.Generator, with_position: bool):
        p, device = self.patch_size, self.stack.device
        idx = torch.multinomial(self.weights, batch, replacement=True, generator=generator)
        u = torch.rand(batch, 4, generator=generator).double()
        free = self.sizes[idx] - p + 1  # crop positions per axis
        r, c = (u[:, 0] * free[:, 0]).long(), (u[:, 1] * free[:, 1]).long()
        span = torch.arange(p)
        # one small host-to-device copy per batch, asynchronous from pinned memory
        where = _to(torch.cat([idx[:, None], r[:, None] + span, c[:, None] + span, (u[:, 2:] < 0.5).long()], 1), device)
        index, rows, cols, flip = where[:, 0], where[:, 1:p + 1], where[:, p + 1:2 * p + 1], where[:, 2 * p + 1:]
        chans = torch.arange(self.stack.shape[1], device=device)
        crops = self.stack[index[:, None, None, None], chans[None, :, None, None],
                           rows[:, None, :, None], cols[:, None, None, :]]
        if self.flips:
            crops = torch.where(flip[:, 0, None, None, None].bool(), crops.flip(-1), crops)
            crops = torch.where(flip[:, 1, None, None, None].bool(), crops.flip(-2), crops)
        if not with_position:
            return crops, None
        top, left, full_h, full_w = self.places[idx].unbind(1)  # the pixel-centre formula of position_map
        ys = ((top + r)[:, None] + span + 0.5) / full_h[:, None]
        xs = ((left + c)[:, None] + span + 0.5) / full_w[:, None]
        pos = torch.stack([xs[:, None, :].expand(batch, p, p), ys[:, :, None].expand(batch, p, p)], 1)
        return crops, _to(pos.float(), device)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU from pinned memory without waiting for the device."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
