"""Stage `invert`: DDM4IP step 3, restoring the test observations with the learned operator.

The same solver also runs with the true kernel (the oracle), when the data is
synthetic, so `evaluate` can put the two side by side.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddmops.config import InvertConfig
from ddmops.data import load_image_set, save_image_set
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.diffpir import diffpir
from ddmops.io import read_json, save_npz
from ddmops.operators.blur import Blur
from ddmops.operators.kernels import load_kernel
from pipelines.context import StageContext
from pipelines.learn_operator import KERNEL_FILE
from pipelines.prepare import FILES
from pipelines.train_prior import PRIOR_FILE


def operator_kernel(cfg: InvertConfig, ctx: StageContext) -> tuple[torch.Tensor, str]:
    """The kernel to restore with and where it came from."""
    path = Path(cfg.operator) if cfg.operator else ctx.ws.path("operator", KERNEL_FILE)
    if not path.is_absolute():
        path = ctx.ws.root / path
    return load_kernel(path), str(path)


def run(cfg: InvertConfig, ctx: StageContext) -> dict[str, float]:
    prepared, out = ctx.ws.path("prepared"), ctx.ws.path("restored")
    meta = read_json(prepared / FILES["meta"])
    sigma = meta["noise_sigma"] if cfg.noise_sigma is None else cfg.noise_sigma
    prior = FlowPrior.load(ctx.ws.path("priors", "clean", PRIOR_FILE), ctx.device)
    y_all = torch.stack(load_image_set(prepared / FILES["test_degraded"]))
    kernel, source = operator_kernel(cfg, ctx)
    ctx.tracker.set_tags({"ddmops.operator": source})
    kernels = {"learned": kernel}
    if (prepared / FILES["kernel"]).exists():
        kernels["oracle"] = load_kernel(prepared / FILES["kernel"])

    metrics: dict[str, float] = {}
    for name, k in kernels.items():
        op = Blur(k.to(ctx.device))
        g = torch.Generator(device=ctx.device).manual_seed(cfg.seed)
        prior.nfe = 0
        t0 = time.perf_counter()
        restored = []
        for i in range(0, len(y_all), cfg.batch_size):
            y = y_all[i:i + cfg.batch_size].to(ctx.device)
            restored.append(diffpir(y, op, prior, sigma_n=sigma, steps=cfg.steps, lam=cfg.lam, zeta=cfg.zeta,
                                    cg_iters=cfg.cg_iters, generator=g).cpu())
        seconds = time.perf_counter() - t0
        save_npz(out / f"{name}.npz", save_image_set(list(torch.cat(restored)), quantise=False))
        suffix = "" if name == "learned" else f"/{name}"
        batches = -(-len(y_all) // cfg.batch_size)
        metrics |= {f"sec_per_image{suffix}": seconds / len(y_all), f"nfe{suffix}": prior.nfe / batches}
    return metrics
