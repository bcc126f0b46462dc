"""A compact UNet velocity network v(x_t, t) with size presets in the spirit of DDM4IP.

Residual blocks take a sinusoidal time embedding (scale/shift after GroupNorm), a
learned label embedding can be added to it, self-attention runs at the coarse levels
listed in ``attn_resolutions`` (feature sides at the training patch size), and two
optional input channels carry the pixel's normalised (x, y) position in the full image.
Inputs of any size are padded to the network's stride and the output cropped back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddmops.config import UNetConfig

PRESETS = {
    "tiny": dict(channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8,)),
    "xxxs": dict(channels=64, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8,)),
    "xxs": dict(channels=64, channel_mult=(1, 2, 3, 4), num_blocks=2, attn_resolutions=(8,)),
    "xs": dict(channels=96, channel_mult=(1, 2, 3, 4), num_blocks=2, attn_resolutions=(8, 16)),
}


@dataclass(frozen=True)
class UNetArch:
    """Everything needed to rebuild the network (stored in checkpoints)."""

    img_channels: int
    resolution: int
    channels: int
    channel_mult: tuple[int, ...]
    num_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float
    position_channels: bool
    num_labels: int

    @classmethod
    def from_config(cls, cfg: UNetConfig, img_channels: int, resolution: int) -> "UNetArch":
        preset = PRESETS[cfg.preset]
        pick = lambda name: getattr(cfg, name) if getattr(cfg, name) is not None else preset[name]  # noqa: E731
        return cls(img_channels=img_channels, resolution=resolution, channels=pick("channels"),
                   channel_mult=tuple(pick("channel_mult")), num_blocks=pick("num_blocks"),
                   attn_resolutions=tuple(pick("attn_resolutions")), dropout=cfg.dropout,
                   position_channels=cfg.position_channels, num_labels=cfg.num_labels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"], d["attn_resolutions"] = list(self.channel_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetArch":
        return cls(**{**d, "channel_mult": tuple(d["channel_mult"]),
                      "attn_resolutions": tuple(d["attn_resolutions"])})


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, max(1, ch // 4)), ch)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000). t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.drop = _norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, channels_per_head: int = 32):
        super().__init__()
        self.heads = max(1, ch // channels_per_head)
        self.norm, self.qkv, self.proj = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class VelocityUNet(nn.Module):
    """v(x_t, t): (B, C, H, W), (B,) -> (B, C, H, W); optional position (B, 2, H, W), labels (B,)."""

    def __init__(self, arch: UNetArch):
        super().__init__()
        self.arch = arch
        ch, mult = arch.channels, arch.channel_mult
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(arch.num_labels, emb_dim) if arch.num_labels > 0 else None
        in_ch = arch.img_channels + (2 if arch.position_channels else 0)
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        attn_levels = {i for i in range(len(mult)) if arch.resolution // 2 ** i in arch.attn_resolutions}

        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        for level, m in enumerate(mult):
            for _ in range(arch.num_blocks):
                self.down.append(self._block(cur, ch * m, emb_dim, level in attn_levels))
                cur = ch * m
                skips.append(cur)
            if level < len(mult) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid = nn.ModuleList([ResBlock(cur, cur, emb_dim, arch.dropout), Attention(cur),
                                  ResBlock(cur, cur, emb_dim, arch.dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(mult))):
            for _ in range(arch.num_blocks + 1):
                self.up.append(self._block(cur + skips.pop(), ch * mult[level], emb_dim, level in attn_levels))
                cur = ch * mult[level]
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cur, cur, 3, padding=1)))
        self.norm_out = _norm(cur)
        self.conv_out = nn.Conv2d(cur, arch.img_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.stride = 2 ** (len(mult) - 1)

    def _block(self, cin: int, cout: int, emb_dim: int, attn: bool) -> nn.ModuleList:
        layers = [ResBlock(cin, cout, emb_dim, self.arch.dropout)]
        if attn:
            layers.append(Attention(cout))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                position: torch.Tensor | None = None) -> torch.Tensor:
        h_in, w_in = x.shape[-2:]
        if self.arch.position_channels:
            if position is None:
                raise ValueError("this network was built with position channels: pass position (B, 2, H, W)")
            x = torch.cat([x, position.to(x.dtype)], dim=1)
        x = self._pad(x)
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        emb = self.time_mlp(timestep_embedding(t, self.arch.channels).to(x.dtype))
        if self.label_emb is not None:
            if labels is None:
                raise ValueError("this network was built with labels: pass labels (B,)")
            emb = emb + self.label_emb(labels)

        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = self._run_layer(layer, h, emb)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = self._run_layer(layer, torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :h_in, :w_in]

    @staticmethod
    def _run_layer(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.ModuleList):
            h = layer[0](h, emb)
            for extra in layer[1:]:
                h = extra(h)
            return h
        return layer(h)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = (-x.shape[-2]) % self.stride, (-x.shape[-1]) % self.stride
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
