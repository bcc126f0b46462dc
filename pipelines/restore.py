"""Stages `restore-dcdp` and `restore-dps`: restore the held-out test images for one task.

Both build the same seeded problem (operator and measurements) from the task's config,
so their results compare image for image. DCDP runs in both purification modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ddmops.config import RestoreConfig, TaskConfig
from ddmops.data import load_geometry, load_image_set, save_image_set
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.dcdp import DcdpState, dcdp
from ddmops.inversion.dps import dps
from ddmops.io import save_npz
from ddmops.metrics import psnr, residual_ratio, ssim
from ddmops.operators.base import Operator
from ddmops.operators.psf_operator import field_positions
from ddmops.plots import image_grid
from ddmops.tasks import Problem, make_problem
from pipelines.context import StageContext
from pipelines.operators import resolve_operator
from pipelines.resume import BatchProgress


@dataclass(frozen=True)
class RestoreJob:
    """One task's config with the settings shared by all tasks (what a stage run depends on)."""

    images: int
    batch_size: int
    seed: int
    task: TaskConfig = field(default_factory=TaskConfig)
    tile: int = 0
    precision: str = "fp32"
    compile: bool = False


def job(cfg: RestoreConfig, task: str) -> RestoreJob:
    return RestoreJob(cfg.images, cfg.batch_size, cfg.seed, getattr(cfg, task), cfg.tile, cfg.precision, cfg.compile)


def problem(cfg: RestoreJob, ctx: StageContext) -> Problem:
    """The seeded problem. A learned operator (a file or an MLflow model URI) is resolved once,
    and which it was (the version an alias named) goes into the run's tags."""
    path = ctx.ws.prepared("test")
    x = torch.stack(load_image_set(path)[:cfg.images])
    learned = None
    if cfg.task.operator.kind == "learned":
        learned, provenance = resolve_operator(cfg.task.operator.source, ctx.ws.root)
        ctx.tracker.set_tags(provenance)
    positions = field_positions(load_geometry(path)[:cfg.images], x.shape[-2:])
    return make_problem(cfg.task, x, ctx.ws.root, cfg.seed, positions, learned)


def run_method(method: str, t: TaskConfig, y: torch.Tensor, op: Operator, prior: FlowPrior, x_shape: torch.Size,
               generator: torch.Generator, start: DcdpState | None = None,
               on_iteration: Callable[[DcdpState], None] | None = None) -> torch.Tensor:
    """Restore one batch with ``method`` (dcdp-ode, dcdp-tweedie or dps); DCDP resumes from
    ``start`` and reports each outer iteration to ``on_iteration``."""
    if method == "dps":
        return dps(y, op, prior, t.dps, x_shape=x_shape, generator=generator)
    return dcdp(y, op, prior, t.dcdp, mode=method.removeprefix("dcdp-"), x_shape=x_shape, generator=generator,
                start=start, on_iteration=on_iteration).x


def restore(methods: list[str], cfg: RestoreJob, ctx: StageContext, prior: FlowPrior,
            p: Problem, name_of_run: str = "restore") -> dict[str, dict]:
    """Run each method over the images in batches -> {method: {"x", "psnr", "ssim", "residual",
    "nfe", "seconds"}}. Per-image PSNR and residual are logged as each batch ends (step: image
    index), so a tuning trial can be pruned part way. Progress is checkpointed (see
    :class:`BatchProgress`): an interrupted run continues where it stood, to the same result."""
    out = {}
    for name in methods:
        g = torch.Generator(device=ctx.device).manual_seed(cfg.seed + 1)
        saved = BatchProgress(ctx.ws.checkpoint(f"{name_of_run}-{name}"), ctx.run_key)
        done = saved.resume({"parts": [], "psnr": [], "residual": [], "nfe": 0, "seconds": 0.0}, g)
        every = cfg.task.dcdp.checkpoint_every
        prior.nfe = done["nfe"]
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter() - done["seconds"]
        for i in range(len(done["parts"]) * cfg.batch_size, len(p.x), cfg.batch_size):
            sl = slice(i, i + cfg.batch_size)
            y = p.y[sl].to(ctx.device)

            def checkpoint(state: DcdpState) -> None:
                if every and state.iteration % every == 0:
                    saved.save(done | {"nfe": prior.nfe, "seconds": time.perf_counter() - t0}, g, state)
            x = run_method(name, cfg.task, y, p.op.batch(sl), prior, p.x[sl].shape, g, saved.partial(), checkpoint)
            with torch.no_grad():
                residual = residual_ratio(y, p.op.batch(sl).A(x), p.sigma).cpu()
            x = x.cpu()
            done["parts"].append(x)
            done["psnr"].append(psnr(x, p.x[sl]))
            done["residual"].append(residual)
            saved.save(done | {"nfe": prior.nfe, "seconds": time.perf_counter() - t0}, g)
            for j, (pi, ri) in enumerate(zip(done["psnr"][-1].tolist(), residual.tolist())):
                ctx.tracker.log_metrics({f"psnr/{name}/per_image": pi, f"residual/{name}/per_image": ri}, step=i + j)
        x = torch.cat(done["parts"])
        out[name] = {"x": x, "psnr": torch.cat(done["psnr"]), "ssim": ssim(x, p.x),
                     "residual": torch.cat(done["residual"]), "nfe": prior.nfe / len(done["parts"]),
                     "seconds": (time.perf_counter() - t0) / len(p.x),
                     "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if ctx.device.type == "cuda" else 0.0}
    return out


def run_methods(methods: list[str], cfg: RestoreJob, ctx: StageContext, task: str) -> dict[str, float]:
    prior = FlowPrior.load(ctx.ws.prior("clean"), ctx.device).accelerate(cfg.compile, cfg.precision)
    prior.tile = cfg.tile
    p = problem(cfg, ctx)
    run_name = f"restore-{task}"
    results = restore(methods, cfg, ctx, prior, p, run_name)
    metrics: dict[str, float] = {}
    for name, r in results.items():
        save_npz(ctx.ws.task_output(task, name), save_image_set(list(r["x"]), quantise=False))
        metrics |= {f"psnr/{name}": r["psnr"].mean().item(), f"ssim/{name}": r["ssim"].mean().item(),
                    f"discrepancy/{name}": (r["residual"] - 1).abs().mean().item(),
                    f"nfe/{name}": r["nfe"], f"sec_per_image/{name}": r["seconds"]}
        if r["peak_mb"]:
            metrics[f"peak_mb/{name}"] = r["peak_mb"]
        for i, si in enumerate(r["ssim"].tolist()):
            ctx.tracker.log_metrics({f"ssim/{name}/per_image": si}, step=i)
    rows = [{n: r["x"][i] for n, r in results.items()} | {"truth": p.x[i]} for i in range(min(4, len(p.x)))]
    if p.y.shape[-2:] == p.x.shape[-2:]:  # measurements that are images: show them first
        rows = [{"measurement": p.y[i].clamp(-1, 1)} | row for i, row in enumerate(rows)]
    ctx.tracker.log_image(image_grid(rows), f"{task}_grid.png")
    for name in methods:  # finished: nothing left to resume
        ctx.ws.checkpoint(f"{run_name}-{name}").unlink(missing_ok=True)
    return metrics


def run_dcdp(cfg: RestoreJob, ctx: StageContext, task: str) -> dict[str, float]:
    return run_methods(["dcdp-ode", "dcdp-tweedie"], cfg, ctx, task)


def run_dps(cfg: RestoreJob, ctx: StageContext, task: str) -> dict[str, float]:
    return run_methods(["dps"], cfg, ctx, task)
