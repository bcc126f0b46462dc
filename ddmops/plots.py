"""Pictures as uint8 arrays (H, W, 3): kernels side by side, image grids, sample mosaics."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ddmops.data import to_image

# viridis at 5 stops, linearly interpolated
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
LABEL_H = 14


def colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> uint8 (H, W, 3)."""
    pos = np.clip(v, 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    return (_VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac).round().astype(np.uint8)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    canvas = Image.new("RGB", (tile.shape[1], tile.shape[0] + LABEL_H), (255, 255, 255))
    canvas.paste(Image.fromarray(tile), (0, LABEL_H))
    ImageDraw.Draw(canvas).text((2, 1), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def _hstack(tiles: list[np.ndarray], gap: int = 4) -> np.ndarray:
    h = max(t.shape[0] for t in tiles)
    out = []
    for i, t in enumerate(tiles):
        pad = np.full((h - t.shape[0], t.shape[1], 3), 255, np.uint8)
        out.append(np.concatenate([t, pad]))
        if i < len(tiles) - 1:
            out.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)


def _vstack(strips: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Pictures one under the other, left-aligned on a white background."""
    w = max(s.shape[1] for s in strips)
    return np.concatenate([np.pad(s, ((0, gap), (0, w - s.shape[1]), (0, 0)), constant_values=255) for s in strips])


def _enlarge(img: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, 3) repeated ``factor`` times along both axes: pixels stay sharp."""
    return np.kron(img, np.ones((factor, factor, 1), np.uint8)) if factor > 1 else img


def kernels_side_by_side(kernels: dict[str, torch.Tensor], tile: int = 160) -> np.ndarray:
    """Kernels (K, K) of any sizes, shown on one colour scale (0 to the largest entry)."""
    size = max(k.shape[-1] for k in kernels.values())
    vmax = max(k.max().item() for k in kernels.values()) or 1.0
    tiles = []
    for name, k in kernels.items():
        pad = (size - k.shape[-1]) // 2
        k = torch.nn.functional.pad(k.float(), (pad, pad, pad, pad)).numpy()
        rgb = colormap(k / vmax)
        scale = max(1, tile // size)
        tiles.append(_label(_enlarge(rgb, scale), name))
    return _hstack(tiles)


def image_row(images: dict[str, torch.Tensor]) -> np.ndarray:
    """Labelled images (C, H, W) in [-1, 1], centred on a common height."""
    return _hstack([_label(_rgb(to_image(x)), name) for name, x in images.items()])


def image_grid(rows: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """One labelled row per dict, stacked vertically."""
    return _vstack([image_row(r) for r in rows])


def picture_table(rows: dict[str, dict[str, np.ndarray]], columns: list[str], min_side: int = 160) -> np.ndarray:
    """A titled row per entry of ``rows`` (title -> {column: (H, W, 3) picture}), its pictures in
    ``columns`` order, each labelled with its column (a blank where a column has none); small
    pictures (kernels) are enlarged by an integer factor to at least ``min_side``."""
    blank = np.full((32, 32, 3), 255, np.uint8)
    strips = []
    for title, row in rows.items():
        tiles = [_label(_enlarge(row[c], -(-min_side // max(row[c].shape[:2]))), c) if c in row
                 else _label(blank, f"{c}: -") for c in columns]
        strips.append(_label(_hstack(tiles, gap=8), title))
    return _vstack(strips, gap=8)


def mosaic(x: torch.Tensor, cols: int | None = None) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one tiled picture."""
    n = x.shape[0]
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w = x.shape[-2:]
    out = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = _rgb(to_image(x[i]))
    return out


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


KERNEL_TILE = 160  # the least side, in pixels, of one kernel in a picture


def psf_mosaic(psfs: torch.Tensor, grid: tuple[int, int] | None = None, vmax: float | None = None,
               tile: int = KERNEL_TILE) -> np.ndarray:
    """PSFs (N, K, K) laid out as their grid (Gy, Gx) (a row when None), each enlarged to at least
    ``tile`` pixels and scaled to its own peak unless ``vmax`` fixes one scale."""
    n, k = psfs.shape[0], psfs.shape[-1]
    gy, gx = grid or (1, n)
    scale = -(-tile // k)
    side = k * scale + 2
    out = np.full((gy * side, gx * side, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, gx)
        p = psfs[i].float().numpy()
        out[r * side:r * side + k * scale, c * side:c * side + k * scale] = _enlarge(
            colormap(p / (vmax or max(p.max(), 1e-12))), scale)
    return out


def colour_bar(vmax: float, height: int, width: int = 18) -> np.ndarray:
    """A vertical colour bar from 0 (bottom) to ``vmax`` (top), its ends labelled."""
    ramp = np.repeat(np.linspace(1, 0, height)[:, None], width, axis=1)
    bar = colormap(ramp)
    canvas = Image.new("RGB", (width + 56, height + 2 * LABEL_H), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (0, LABEL_H))
    draw = ImageDraw.Draw(canvas)
    draw.text((width + 4, LABEL_H - 4), f"{vmax:.3g}", fill=(0, 0, 0))
    draw.text((width + 4, height + LABEL_H - 10), "0", fill=(0, 0, 0))
    return np.asarray(canvas)


def psf_comparison(estimate: torch.Tensor, truth: torch.Tensor | None, grid: tuple[int, int] | None,
                   label: str = "estimate") -> np.ndarray:
    """Estimate, truth and |error| PSF stacks (N, K, K) side by side on one colour scale, with its
    colour bar (without a truth: the estimate alone, titled ``label``)."""
    if truth is None:
        vmax = max(estimate.max().item(), 1e-12)
        panel = _label(psf_mosaic(estimate, grid, vmax), label)
        return _hstack([panel, colour_bar(vmax, panel.shape[0] - 2 * LABEL_H)])
    k = max(estimate.shape[-1], truth.shape[-1])
    est, tru = (torch.nn.functional.pad(p, [(k - p.shape[-1]) // 2] * 4) for p in (estimate, truth))
    vmax = max(est.max().item(), tru.max().item(), 1e-12)
    panels = [_label(psf_mosaic(p, grid, vmax), name) for name, p in
              (("estimate", est), ("truth", tru), ("|error|", (est - tru).abs()))]
    return _hstack([*panels, colour_bar(vmax, panels[0].shape[0] - 2 * LABEL_H)])


def curves_chart(rows: list[dict[str, float]], title: str = "") -> np.ndarray:
    """One panel per metric group (the part before '/': loss, kernel, ...) of ``rows``
    ``{"step": s, name: value, ...}``, against the step (images seen)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for r in rows for k in r if k != "step"})
    groups = sorted({n.split("/")[0] for n in names})
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3), squeeze=False, dpi=80)
    for ax, group in zip(axes[0], groups):
        for name in (n for n in names if n.split("/")[0] == group):
            pts = [(r["step"], r[name]) for r in rows if name in r]
            ax.plot(*zip(*pts), label=name, marker="." if len(pts) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(group)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
