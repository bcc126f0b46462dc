"""Blur convolution: direct (depthwise conv2d) against FFT, forward + backward, per kernel side.

Times one data-consistency step's worth of work, 0.5 ||k * x - y||^2 and its gradient in x,
for each kernel side and image size, both ways in the same run; the crossover justifies
``ddmops.operators.blur.FFT_MIN_SIDE`` (the side from which `convolve` uses the FFT).

    python benchmarks/conv_speed.py [--sides 5 7 9 11 13 15 21 31] [--sizes 64 256] [--batch 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import print_table  # noqa: E402
from ddmops.device import pick_device  # noqa: E402
from ddmops.operators.blur import FFT_MIN_SIDE, _direct_valid, _fft_valid  # noqa: E402


def ms_per_step(conv, x: torch.Tensor, k: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def step():
        xg = x.detach().requires_grad_(True)
        (0.5 * ((conv(xg, k) - y) ** 2).sum()).backward()
    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[5, 7, 9, 11, 13, 15, 21, 31])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    device = pick_device()
    g = torch.Generator().manual_seed(0)
    rows = []
    for size in args.sizes:
        for side in args.sides:
            x = torch.randn(args.batch, 3, size + side - 1, size + side - 1, generator=g).to(device)
            k = torch.rand(side, side, generator=g).to(device)
            y = torch.randn(args.batch, 3, size, size, generator=g).to(device)
            err = (_direct_valid(x, k) - _fft_valid(x, k)).abs().max().item()
            t_direct = ms_per_step(_direct_valid, x, k, y, args.repeats)
            t_fft = ms_per_step(_fft_valid, x, k, y, args.repeats)
            rows.append([size, side, t_direct, t_fft, t_direct / t_fft, f"{err:.1e}"])
    fft_gains = [r[4] for r in rows if r[1] >= FFT_MIN_SIDE]
    direct_gains = [r[4] for r in rows if r[1] < FFT_MIN_SIDE]
    print_table(f"Blur forward + backward, batch {args.batch} x 3 channels ({device})",
                ["image", "kernel side", "direct ms", "FFT ms", "speed-up", "max |diff|"], rows,
                f"conv_speed: convolve uses FFT from side {FFT_MIN_SIDE}: FFT speed-up there "
                f"{min(fft_gains, default=0):.2f}x to {max(fft_gains, default=0):.2f}x; below it (direct kept) "
                f"{min(direct_gains, default=0):.2f}x to {max(direct_gains, default=0):.2f}x")


if __name__ == "__main__":
    main()
