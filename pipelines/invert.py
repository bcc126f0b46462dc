"""Stage `invert@<task>`: DDM4IP step 3, restoring the task's test observations with the
learned operator, and (when the data is synthetic) with the true one, by the same method
(``invert.<task>.method``: pnp, pnp-bm3d or diffpir, see ddmops/inversion/methods.py).
"""

from __future__ import annotations

import time

import torch

from ddmops.config import InvertConfig
from ddmops.data import load_geometry, load_image_set, save_image_set
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.methods import invert
from ddmops.io import read_json, save_npz, write_json
from ddmops.operators.psf_operator import PsfOperator, field_positions
from pipelines.context import StageContext
from pipelines.operators import resolve_operator
from pipelines.resume import BatchProgress


def learned_operator(cfg: InvertConfig, ctx: StageContext, task: str) -> tuple[PsfOperator, dict[str, str]]:
    """The operator to restore with (default: this workspace's learned one; else a file, a folder,
    ``models:/<name>@<alias>`` or ``runs:/...``) and run tags saying which it was."""
    return resolve_operator(cfg.operator or str(ctx.ws.operator(task)), ctx.ws.root)


def run(cfg: InvertConfig, ctx: StageContext, task: str) -> dict[str, float]:
    learned, provenance = learned_operator(cfg, ctx, task)  # first: a bad operator fails before any work
    ctx.tracker.set_tags(provenance)
    write_json(ctx.ws.restored_source(task), provenance)  # the results name their operator
    operators = {"learned": learned}
    sigma = read_json(ctx.ws.observed(task, "meta"))["noise_sigma"] if cfg.noise_sigma is None else cfg.noise_sigma
    prior = FlowPrior.load(ctx.ws.prior("clean"), ctx.device).accelerate(cfg.compile, cfg.precision)
    prior.tile = cfg.tile
    test = ctx.ws.observed(task, "test")
    y_all, y_geom = torch.stack(load_image_set(test)), load_geometry(test)
    if ctx.ws.observed(task, "truth").exists():
        operators["oracle"] = PsfOperator.load(ctx.ws.observed(task, "truth"))

    metrics: dict[str, float] = {}
    for name, operator in operators.items():
        x_geom = operator.input_geometry(y_geom)
        pos = field_positions(x_geom, operator.input_size(tuple(y_all.shape[-2:])))
        g = torch.Generator(device=ctx.device).manual_seed(cfg.seed)
        saved = BatchProgress(ctx.ws.checkpoint(f"invert-{task}-{name}"), ctx.run_key)
        done = saved.resume({"parts": [], "nfe": 0, "seconds": 0.0}, g)  # batches restored before a kill
        prior.nfe, t0 = done["nfe"], time.perf_counter() - done["seconds"]
        for i in range(len(done["parts"]) * cfg.batch_size, len(y_all), cfg.batch_size):
            sl = slice(i, i + cfg.batch_size)
            op = operator.operator(pos[sl]).to(ctx.device)
            done["parts"].append(invert(cfg, y_all[sl].to(ctx.device), op, prior, sigma=sigma, generator=g).cpu())
            saved.save(done | {"nfe": prior.nfe, "seconds": time.perf_counter() - t0}, g)
        seconds = time.perf_counter() - t0
        save_npz(ctx.ws.restored(task, name),
                 save_image_set(list(torch.cat(done["parts"])), quantise=False, geometry=x_geom))
        suffix = "" if name == "learned" else f"/{name}"
        batches = -(-len(y_all) // cfg.batch_size)
        metrics |= {f"sec_per_image{suffix}": seconds / len(y_all), f"nfe{suffix}": prior.nfe / batches}
    for name in operators:  # finished: nothing left to resume
        ctx.ws.checkpoint(f"invert-{task}-{name}").unlink(missing_ok=True)
    return metrics
