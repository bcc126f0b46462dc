"""The clean prior as a denoiser, next to BM3D and a Gaussian filter, on held-out images.

The prior denoises y = x + sigma n with its x0-prediction at the flow time of sigma,
t = 1 / (1 + sigma), applied to t * y. The Gaussian filter gets the best width of a grid
(an oracle choice). PSNR in dB on [0, 1] intensities; sigma in the [-1, 1] range.

    python benchmarks/prior_denoise.py [--prior models/priors/clean/prior.safetensors]
        [--images DIR] [--crops 32] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SHARED_DATA, print_table  # noqa: E402
from ddmops.data import PatchSampler, load_image_set, source_images, to_tensor  # noqa: E402
from ddmops.device import pick_device  # noqa: E402
from ddmops.flow import path as fpath  # noqa: E402
from ddmops.flow.prior import FlowPrior  # noqa: E402
from ddmops.metrics import psnr  # noqa: E402
from ddmops.operators.blur import convolve  # noqa: E402
from ddmops.operators.kernels import gaussian_kernel  # noqa: E402


def held_out(images: str, crops: int, size: int, channels: int) -> tuple[torch.Tensor, str]:
    """(crops, C, size, size) in [-1, 1] from a folder, or the workspace's test images."""
    if images:
        pics = [to_tensor(a) for _, a in source_images(images, channels, max_side=10**6)]
        where = images
    else:
        pics = load_image_set(ROOT / "data" / "prepared" / "test_clean.npz")
        where = "data/prepared/test_clean.npz"
    size = min(size, *(min(p.shape[-2:]) for p in pics))
    return PatchSampler(pics, size).sample(crops, torch.Generator().manual_seed(0)), where


def bm3d_denoise(y: torch.Tensor, sigma: float) -> torch.Tensor:
    import bm3d
    out = []
    for img in y:
        z = ((img.permute(1, 2, 0).numpy().astype(np.float64) + 1) / 2)
        fn = bm3d.bm3d_rgb if z.shape[2] == 3 else bm3d.bm3d
        den = fn(z, sigma / 2) if z.shape[2] == 3 else fn(z[..., 0], sigma / 2)[..., None]
        out.append(torch.from_numpy(np.asarray(den, dtype=np.float32)).permute(2, 0, 1) * 2 - 1)
    return torch.stack(out)


def gaussian_best(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    scores = [psnr(convolve(y, gaussian_kernel(9, (w, w)), "reflect"), x).mean().item()
              for w in (0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0)]
    return torch.tensor(max(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=str(ROOT / "models" / "priors" / "clean" / "prior.safetensors"))
    default_images = SHARED_DATA / "bsds500" / "test"
    ap.add_argument("--images", default=str(default_images) if default_images.is_dir() else "",
                    help="held-out image folder (default: ../shared/data/bsds500/test if present, "
                         "else the workspace's test images)")
    ap.add_argument("--crops", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    args = ap.parse_args()

    device = pick_device()
    prior = FlowPrior.load(Path(args.prior), device)
    x, where = held_out(args.images, args.crops, args.size, prior.arch.img_channels)
    g = torch.Generator().manual_seed(1)
    rows, gaps = [], []
    for sigma in args.sigmas:
        y = x + sigma * torch.randn(x.shape, generator=g)
        t = fpath.t_from_sigma(sigma)
        t0 = time.perf_counter()
        with torch.no_grad():
            den = torch.cat([prior.denoise(t * y[i:i + 16].to(device), t).cpu() for i in range(0, len(y), 16)])
        t_prior = (time.perf_counter() - t0) / len(y)
        t0 = time.perf_counter()
        den_bm3d = bm3d_denoise(y, sigma)
        t_bm3d = (time.perf_counter() - t0) / len(y)
        p_noisy, p_gauss = psnr(y, x).mean().item(), gaussian_best(y, x).item()
        p_bm3d, p_prior = psnr(den_bm3d, x).mean().item(), psnr(den, x).mean().item()
        gaps.append(p_prior - p_bm3d)
        rows.append([sigma, p_noisy, p_gauss, p_bm3d, p_prior, p_prior - p_bm3d, 1000 * t_bm3d, 1000 * t_prior])
    meta = prior.meta
    print_table(f"Denoising PSNR (dB), {len(x)} crops {x.shape[-1]}px from {where}; prior: {args.prior} "
                f"(patch {meta.get('patch_size')}, {sum(p.numel() for p in prior.net.parameters()):,} params, "
                f"{device})",
                ["sigma", "noisy", "gaussian (best)", "BM3D", "prior", "prior - BM3D", "BM3D ms/img", "prior ms/img"],
                rows, "prior_denoise: prior - BM3D = " + ", ".join(f"{g:+.2f} dB @ {s}" for g, s in
                                                                    zip(gaps, args.sigmas))
                + f"; beats BM3D at every sigma: {'yes' if min(gaps) > 0 else 'no'}")


if __name__ == "__main__":
    main()
