"""Files in and out: images, arrays, JSON and checkpoints, all written atomically.

A write goes to a temporary file in the target folder, is flushed and fsynced, then
``os.replace``d over the target, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ddmops.errors import DataError, TrainingError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temp file, fsync it, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as a plainly created file would be (mkstemp makes it private)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda fh: json.dump(data, fh, indent=2, sort_keys=True), mode="w")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (has the stage that writes it run?)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def save_array(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def save_checkpoint(path: Path, state: dict) -> None:
    """Save a dict of tensors and plain values (loadable with ``weights_only=True``). A failed
    write (disk full, ...) leaves the previous checkpoint as it was."""
    try:
        atomic_write(path, lambda fh: torch.save(state, fh))
    except OSError as exc:
        kept = "the previous checkpoint is intact" if Path(path).exists() else "no checkpoint was written"
        raise TrainingError(f"{path}: could not write the checkpoint ({exc.strerror or exc}); {kept}") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise DataError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); other files are skipped with a warning
    (README, .dvc and .gitignore files silently)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    images, skipped = [], []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_dir() or any(part.startswith(".") for part in rel.parts) or p.suffix in (".dvc", ".md"):
            continue
        (images if p.suffix.lower() in IMAGE_SUFFIXES else skipped).append(p)
    if skipped:
        warnings.warn(f"{folder}: skipping {len(skipped)} non-image file(s), e.g. {skipped[0].name}")
    if not images:
        raise DataError(f"{folder}: no images found (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Read an image file as uint8 ``(H, W, channels)``.

    Grayscale, palette, RGBA (composited on white) and 16-bit images are converted;
    a corrupt or truncated file raises :class:`DataError` naming it.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return to_uint8(np.asarray(_to_8bit_mode(im)), channels)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def _to_8bit_mode(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode not in ("L", "RGB"):
        return im.convert("RGB")
    return im


def to_uint8(arr: np.ndarray, channels: int) -> np.ndarray:
    """Any 2-D/3-D image array (bool, uint8, float in [0, 1]) -> uint8 ``(H, W, channels)``."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"expected an image array of 2 or 3 dimensions, got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 1 and arr.shape[2] == 3:
        arr = np.round(arr @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
    return np.ascontiguousarray(arr)


TIFF_SUFFIXES = (".tif", ".tiff")


def read_image_float(path: Path, channels: int = 3) -> tuple[np.ndarray, int]:
    """An image file at its full bit depth: float32 ``(H, W, channels)`` in [0, 1] and the depth
    it was stored with (8 or 16). 16-bit: TIFF (grey or colour) or 16-bit grey PNG; colour PNGs
    are read at 8 bits. A corrupt or missing file raises :class:`DataError` naming it."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile
            arr = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im if im.mode in ("L", "RGB", "I;16", "I;16B", "I;16L", "I") else _to_8bit_mode(im))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure: not a readable image
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if arr.dtype == np.uint8:
        depth, x = 8, arr.astype(np.float32) / 255.0
    elif arr.dtype in (np.uint16, np.int32, np.int16) or arr.max() > 255:
        depth, x = 16, np.clip(arr.astype(np.float32) / 65535.0, 0, 1)
    elif np.issubdtype(arr.dtype, np.floating):
        depth, x = 16, np.clip(arr.astype(np.float32), 0, 1)
    else:
        depth, x = 8, np.clip(arr.astype(np.float32) / 255.0, 0, 1)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise DataError(f"{path}: expected a grey or colour image, got an array of shape {arr.shape}")
    x = x[..., :3]
    if channels == 3 and x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    elif channels == 1 and x.shape[2] == 3:
        x = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return np.ascontiguousarray(x), depth


def write_image(path: Path, image: np.ndarray, depth: int) -> Path:
    """Write float ``(H, W, C)`` in [0, 1] atomically at ``depth`` bits: 8 as PNG, 16 as TIFF (the
    suffix of ``path`` is set to match). Returns the path written."""
    path = Path(path).with_suffix(".png" if depth == 8 else ".tif")
    x = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    x = x[..., 0] if x.shape[-1] == 1 else x
    if depth == 8:
        save_png(path, np.round(x * 255).astype(np.uint8))
    else:
        import tifffile
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.round(x * 65535).astype(np.uint16))
        atomic_write(path, lambda fh: fh.write(buffer.getvalue()))
    return path


def save_png(path: Path, image: np.ndarray) -> None:
    """Save uint8 ``(H, W)`` or ``(H, W, 3)`` as PNG."""
    def write(fh):
        Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image).save(fh, "PNG")
    atomic_write(path, write)


def iter_npz(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in sorted(data.files):
                yield key, data[key]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (has `ddmops run prepare` run?)") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
