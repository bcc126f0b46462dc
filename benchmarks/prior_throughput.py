"""Training and sampling throughput of the flow prior per UNet preset and patch size.

For each configuration, in a fresh process: images/s of the real training loop
(`train_prior`: crop sampling, noise, forward, backward, clipping, Adam, EMA), images/s
of the bare UNet forward+backward on ready tensors (the upper bound), their ratio (the
goal on GPU is at most 2: no input-pipeline stall), peak memory (GPU: max allocated;
CPU: peak resident set of the process), and sampling cost in ms per image per step.

    python benchmarks/prior_throughput.py [--presets tiny xxxs] [--patches 16 32] [--batch 32]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(preset: str, patch: int, batch: int, steps: int, device_name: str) -> dict:
    import torch

    from ddmops.config import PriorConfig, UNetConfig
    from ddmops.data import PatchSampler
    from ddmops.flow.prior import FlowPrior
    from ddmops.flow.train import train_prior
    from ddmops.flow.unet import UNetArch, VelocityUNet, count_parameters
    from ddmops.tracker import NullTracker

    device = torch.device(device_name)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 4 * patch, 4 * patch, generator=g) * 2 - 1 for _ in range(8)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # bare forward + backward + Adam on ready tensors
    net = VelocityUNet(UNetArch.from_config(UNetConfig(preset=preset), 3, patch)).to(device)
    opt = torch.optim.Adam(net.parameters())
    x, t = torch.randn(batch, 3, patch, patch, device=device), torch.rand(batch, device=device)
    for i in range(steps + 2):
        if i == 2:
            sync()
            t0 = time.perf_counter()
        loss = net(x, t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    bare = steps * batch / (time.perf_counter() - t0)

    # the real training loop (warm-up excluded by timing two lengths)
    tmp = tempfile.TemporaryDirectory()

    def run(n_steps: int) -> float:
        cfg = PriorConfig(model=UNetConfig(preset=preset), patch_size=patch, batch_size=batch,
                          images=n_steps * batch, log_every=10**9, sample_every=10**9,
                          checkpoint_every=10**9, eval_patches=batch)
        t0 = time.perf_counter()
        train_prior(cfg, PatchSampler(images, patch, flips=True), torch.zeros(1, 3, patch, patch), img_channels=3,
                    device=device, tracker=NullTracker(), checkpoint=Path(tmp.name) / f"{n_steps}.pt", run_key="",
                    meta={}, progress=False)
        sync()
        return time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    short, long = run(2), run(steps + 2)
    loop = steps * batch / (long - short)

    prior = FlowPrior(net.eval())
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        prior.sample((batch, 3, patch, patch), gen, steps=2)
        sync()
        t0 = time.perf_counter()
        prior.sample((batch, 3, patch, patch), gen, steps=8)
        sync()
    sample_ms = 1000 * (time.perf_counter() - t0) / (8 * batch)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"params": count_parameters(net), "loop": loop, "bare": bare, "peak_mb": peak, "sample_ms": sample_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "xxxs", "xxs"])
    ap.add_argument("--patches", nargs="+", type=int, default=[16, 32])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="")
    args = ap.parse_args()
    import torch

    from benchmarks.common import print_table
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = mp.get_context("spawn")
    rows, ratios = [], []
    for preset in args.presets:
        for patch in args.patches:
            with ctx.Pool(1) as pool:
                r = pool.apply(measure, (preset, patch, args.batch, args.steps, device))
            ratios.append(r["bare"] / r["loop"])
            rows.append([preset, patch, f"{r['params']:,}", r["loop"], r["bare"], r["bare"] / r["loop"],
                         r["peak_mb"], r["sample_ms"]])
    mem = "GPU max allocated" if device.startswith("cuda") else "process peak RSS"
    print_table(f"Prior throughput on {device}, batch {args.batch}",
                ["preset", "patch", "params", "train img/s", "bare fwd+bwd img/s", "bare / train",
                 f"peak MB ({mem})", "sample ms/img/step"], rows,
                f"prior_throughput: training loop within {max(ratios):.2f}x of bare forward+backward "
                f"(goal <= 2x on GPU) on {device}")


if __name__ == "__main__":
    main()
