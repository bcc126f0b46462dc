"""A network on overlapping tiles, blended without seams: priors trained on small patches
restore larger images with bounded memory (attention cost grows with the tile, not the image)."""

from __future__ import annotations

from typing import Callable

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, size): every ``stride``, the last one flush with the end."""
    starts = list(range(0, size - tile + 1, stride))
    return starts if starts[-1] == size - tile else starts + [size - tile]


def _ramp(tile: int, overlap: int, device: torch.device) -> torch.Tensor:
    """(tile,) weights rising over ``overlap`` pixels at both ends, never 0."""
    i = torch.arange(tile, device=device, dtype=torch.float32) + 0.5
    return torch.minimum(torch.ones(()), torch.minimum(i, tile - i) / max(overlap, 1))


def tiled(fn: Callable[..., torch.Tensor], x: torch.Tensor, tile: int, overlap: int | None = None,
          **maps: torch.Tensor | None) -> torch.Tensor:
    """``fn(x, **maps)`` computed on overlapping ``tile`` x ``tile`` crops of x (B, C, H, W) and
    blended with separable ramp weights normalised to sum to 1 at every pixel (so a function
    acting pixel by pixel is reproduced exactly). ``maps`` (B, *, H, W) (e.g. field positions)
    are cropped alongside; ``None`` entries pass through. All crops go through ``fn`` as one
    batch. -> (B, C', H, W)"""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x, **maps)
    th, tw = min(tile, h), min(tile, w)
    overlap = tile // 4 if overlap is None else overlap
    stride = max(1, tile - overlap)
    boxes = [(r, c) for r in _starts(h, th, stride) for c in _starts(w, tw, stride)]

    def crops(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[..., r:r + th, c:c + tw] for r, c in boxes])
    out = fn(crops(x), **{k: (crops(v) if v is not None else None) for k, v in maps.items()})
    out = out.reshape(len(boxes), x.shape[0], *out.shape[1:])
    weight = (_ramp(th, overlap, x.device)[:, None] * _ramp(tw, overlap, x.device)[None]).to(out.dtype)
    acc = torch.zeros(x.shape[0], out.shape[2], h, w, dtype=out.dtype, device=out.device)
    norm = torch.zeros(h, w, dtype=out.dtype, device=out.device)
    for (r, c), part in zip(boxes, out):
        acc[..., r:r + th, c:c + tw] += part * weight
        norm[r:r + th, c:c + tw] += weight
    return acc / norm
