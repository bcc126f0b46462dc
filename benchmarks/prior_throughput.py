"""Training, learning and sampling throughput at the stages' own settings, in FLOP terms.

For each prior domain (``train_prior.<domain>`` of the params file: preset, patch, batch,
precision, compile), in a fresh process: images/s of the real training loop (`train_prior`:
crop sampling, noise, forward, backward, clipping, fused Adam, EMA, the NaN guard) and of the
bare network forward+backward on ready tensors (same precision and compilation), GFLOP per
image of one forward+backward (torch.utils.flop_counter), the TFLOP/s achieved and, on a GPU,
their share of the device's bf16 matrix peak measured in the same run; peak memory and
sampling ms per image per step. ``--baseline`` adds each domain at fp32, batch 64, eager (the
settings before this benchmark's goals) for a side-by-side comparison. ``--tasks`` adds
operator learning (`learn_operator.<task>`) images/s.

    python benchmarks/prior_throughput.py [--params params-gpu.yaml] [--domains clean deblur]
        [--tasks deblur] [--steps 20] [--baseline] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device) -> float:
    """TFLOP/s of an 8192^3 bf16 matrix product (mean of 10 after 3 warm-ups): the device's ceiling."""
    import torch
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 10 * 2 * 8192 ** 3 / (time.perf_counter() - t0) / 1e12


def gflop_per_image(net, cfg, device) -> float:
    """FLOP of one forward+backward per image (matmuls, convolutions, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(2, net.arch.img_channels, cfg.patch_size, cfg.patch_size, device=device)
    t = torch.rand(2, device=device)
    pos = torch.rand(2, 2, cfg.patch_size, cfg.patch_size, device=device) if net.arch.position_channels else None
    with FlopCounterMode(display=False) as counter:
        net(x, t, None, pos).pow(2).mean().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / 1e9


def measure_prior(cfg, steps: int, device_name: str) -> dict:
    import torch

    from ddmops.data import PatchSampler
    from ddmops.device import autocast, compiled, pick_device
    from ddmops.flow.prior import FlowPrior
    from ddmops.flow.train import train_prior
    from ddmops.flow.unet import UNetArch, VelocityUNet, count_parameters
    from ddmops.tracker import NullTracker

    device = pick_device(device_name)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 2 * cfg.patch_size, 2 * cfg.patch_size, generator=g) * 2 - 1 for _ in range(64)]
    geometry = torch.tensor([[0.0, 0.0, 2.0 * cfg.patch_size, 2.0 * cfg.patch_size]] * 64, dtype=torch.float64)
    net = VelocityUNet(UNetArch.from_config(cfg.model, 3, cfg.patch_size)).to(device)
    gflop = gflop_per_image(net, cfg, device)

    # bare forward + backward + fused Adam on ready tensors, at the same precision and compilation
    opt = torch.optim.Adam(net.parameters(), fused=True)
    forward = compiled(net, cfg.compile, "the bare network")
    b, p = cfg.batch_size, cfg.patch_size
    x, t = torch.randn(b, 3, p, p, device=device), torch.rand(b, device=device)
    pos = torch.rand(b, 2, p, p, device=device) if cfg.model.position_channels else None
    for i in range(steps + 3):
        if i == 3:
            _sync(device)
            t0 = time.perf_counter()
        with autocast(device, cfg.precision):
            loss = forward(x, t, None, pos).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    bare = steps * b / (time.perf_counter() - t0)
    with torch.no_grad(), autocast(device, cfg.precision):  # compiled and eager networks agree
        diff = (forward(x, t, None, pos).float() - net(x, t, None, pos).float()).abs().max().item()

    tmp = tempfile.TemporaryDirectory()

    def run(n_steps: int) -> float:  # the real loop; warm-up (and compilation) excluded by two lengths
        c = dataclasses.replace(cfg, images=n_steps * b, log_every=10**12, sample_every=10**12,
                                checkpoint_every=10**12, eval_patches=b, accumulation=1)
        _sync(device)
        t0 = time.perf_counter()
        train_prior(c, PatchSampler(images, p, flips=c.flips, geometry=geometry), torch.zeros(1, 3, p, p),
                    img_channels=3, device=device, tracker=NullTracker(), checkpoint=Path(tmp.name) / f"{n_steps}.pt",
                    run_key="", meta={}, progress=False, val_positions=torch.rand(1, 2, p, p))
        _sync(device)
        return time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run(3)  # warm-up: allocator, kernels' autotuning, compilation
    short, long = run(3), run(steps + 3)
    loop = steps * b / (long - short)

    prior = FlowPrior(net.eval()).accelerate(cfg.compile, cfg.precision)
    gen = torch.Generator(device=device).manual_seed(0)
    kw = {"position": pos} if pos is not None else {}
    with torch.no_grad():
        prior.sample((b, 3, p, p), gen, steps=2, **kw)
        _sync(device)
        t0 = time.perf_counter()
        prior.sample((b, 3, p, p), gen, steps=8, **kw)
        _sync(device)
    sample_ms = 1000 * (time.perf_counter() - t0) / (8 * b)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"params": count_parameters(net), "gflop": gflop, "loop": loop, "bare": bare, "peak_mb": peak,
            "sample_ms": sample_ms, "diff": diff, "peak_tflops": matmul_peak(device) if device.type == "cuda" else 0.0}


def measure_learner(prior_cfg, cfg, task: str, steps: int, device_name: str) -> dict:
    """Images/s of DDM4IP step 2 (auxiliary flow update + operator update) at the stage's settings."""
    import torch

    from ddmops.data import PatchSampler
    from ddmops.ddm4ip.learner import learn_operator
    from ddmops.ddm4ip.models import build_model
    from ddmops.device import pick_device
    from ddmops.flow.prior import FlowPrior
    from ddmops.flow.unet import UNetArch, VelocityUNet
    from ddmops.tracker import NullTracker

    device = pick_device(device_name)
    p = prior_cfg.patch_size
    prior = FlowPrior(VelocityUNet(UNetArch.from_config(prior_cfg.model, 3, p)), {"patch_size": p})
    model = build_model(task, cfg, torch.Generator().manual_seed(0))
    size = model.crop_size(p)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 2 * size, 2 * size, generator=g) * 2 - 1 for _ in range(64)]
    geometry = torch.tensor([[0.0, 0.0, 2.0 * size, 2.0 * size]] * 64, dtype=torch.float64)
    tmp = tempfile.TemporaryDirectory()

    def run(n_steps: int) -> float:
        c = dataclasses.replace(cfg, images=n_steps * cfg.batch_size, log_every=10**12, plot_every=10**12,
                                checkpoint_every=10**12)
        m = build_model(task, c, torch.Generator().manual_seed(0))
        _sync(device)
        t0 = time.perf_counter()
        learn_operator(c, m, PatchSampler(images, size, flips=True, geometry=geometry), prior, sigma=0.02,
                       device=device, tracker=NullTracker(), checkpoint=Path(tmp.name) / f"{n_steps}.pt",
                       run_key="", progress=False)
        _sync(device)
        return time.perf_counter() - t0
    run(3)  # warm-up
    short, long = run(3), run(steps + 3)
    return {"loop": steps * cfg.batch_size / (long - short)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    ap.add_argument("--domains", nargs="+", default=["clean", "deblur"])
    ap.add_argument("--tasks", nargs="*", default=[])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--baseline", action="store_true", help="also each domain at fp32, batch 64, eager")
    ap.add_argument("--device", default="")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    import torch

    from benchmarks.common import print_table
    from ddmops.config import load_params
    params = load_params(Path(args.params), args.overrides)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = mp.get_context("spawn")
    rows, best, peak, rates = [], 0.0, 0.0, {}
    for domain in args.domains:
        cfg = getattr(params.train_prior, domain)
        variants = [("stage", cfg)]
        if args.baseline:
            variants.append(("fp32 b64 eager", dataclasses.replace(cfg, precision="fp32", batch_size=64,
                                                                     compile=False)))
        for label, c in variants:
            r = _in_process(ctx, measure_prior, c, args.steps, device)
            name = f"{domain} ({c.model.preset}, {label})"
            if "error" in r:
                rows.append([name, c.patch_size, c.batch_size, c.precision, str(c.compile), r["error"]])
                continue
            tflops = r["gflop"] * r["loop"] / 1e3
            peak = r["peak_tflops"] or peak
            share = f"{100 * tflops / r['peak_tflops']:.0f} %" if r["peak_tflops"] else "-"
            best = max(best, tflops)
            if label == "stage":
                rates[domain] = r["loop"]
            rows.append([name, c.patch_size, c.batch_size, c.precision, str(c.compile), f"{r['params']:,}",
                         r["gflop"], r["loop"], r["bare"], tflops, share, r["peak_mb"], r["sample_ms"], r["diff"]])
    print_table(f"Prior training on {device} ({Path(args.params).name}"
                + (f"; bf16 matmul peak {peak:.0f} TFLOP/s)" if peak else ")"),
                ["prior", "patch", "batch", "precision", "compile", "params", "GFLOP/img", "train img/s",
                 "bare img/s", "train TFLOP/s", "of peak", "peak MB", "sample ms/img/step", "compiled-eager"],
                rows, "", width=230)
    summary = (f"prior_throughput: best training loop {best:.2f} TFLOP/s on {device} (goal on an H200: xxs at 64 px "
               ">= 150)")
    lrows = []
    for task in args.tasks:
        c = getattr(params.learn_operator, task)
        r = _in_process(ctx, measure_learner, getattr(params.train_prior, task), c, task, args.steps, device)
        lrows.append([task, c.batch_size, c.precision, str(c.compile), r.get("loop", r.get("error"))])
        if "loop" in r and task in rates and "clean" in rates:  # one DDM4IP task at these rates
            minutes = [getattr(params.train_prior, "clean").images / rates["clean"] / 60,
                       getattr(params.train_prior, task).images / rates[task] / 60, c.images / r["loop"] / 60]
            summary += (f"; {task} task: clean prior {minutes[0]:.0f} + observation prior {minutes[1]:.0f} + "
                        f"learning {minutes[2]:.0f} = {sum(minutes):.0f} min")
    if lrows:
        print_table(f"Operator learning on {device}", ["task", "batch", "precision", "compile", "img/s"], lrows, "")
    print(summary, flush=True)


def _in_process(ctx, fn, *args) -> dict:
    """``fn(*args)`` in a fresh process; a failure becomes {"error": its first line}."""
    try:
        with ctx.Pool(1) as pool:
            return pool.apply(fn, args)
    except Exception as exc:  # noqa: BLE001 - report and go on with the next configuration
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ''}"}


if __name__ == "__main__":
    main()
