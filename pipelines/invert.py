"""Stage `invert@<task>`: DDM4IP step 3, restoring the task's test observations with the
learned operator, and (when the data is synthetic) with the true one, by the same solver.
"""

from __future__ import annotations

import time

import torch

from ddmops.config import InvertConfig
from ddmops.data import load_geometry, load_image_set, save_image_set
from ddmops.ddm4ip.families import (Arrays, build_operator, input_geometry, input_size, load_arrays, positions,
                                    resolve_operator)
from ddmops.flow.prior import FlowPrior
from ddmops.inversion.diffpir import diffpir
from ddmops.io import read_json, save_npz, write_json
from pipelines.context import StageContext
from pipelines.degrade import FILES as DEGRADED
from pipelines.resume import BatchProgress, progress_file
from pipelines.learn_operator import OPERATOR_FILE
from pipelines.train_prior import prior_path


def learned_operator(cfg: InvertConfig, ctx: StageContext, task: str) -> tuple[Arrays, dict[str, str]]:
    """The operator to restore with (default: this workspace's learned one; else a file, a folder,
    ``models:/<name>@<alias>`` or ``runs:/...``) and run tags saying which it was."""
    return resolve_operator(cfg.operator or str(ctx.ws.path("operator", task, OPERATOR_FILE)), ctx.ws.root)


def run(cfg: InvertConfig, ctx: StageContext, task: str) -> dict[str, float]:
    learned, provenance = learned_operator(cfg, ctx, task)  # first: a bad operator fails before any work
    ctx.tracker.set_tags(provenance)
    write_json(ctx.ws.path("restored", task, "operator_source.json"), provenance)  # the results name their operator
    operators = {"learned": learned}
    folder = ctx.ws.path("degraded", task)
    sigma = read_json(folder / DEGRADED["meta"])["noise_sigma"] if cfg.noise_sigma is None else cfg.noise_sigma
    prior = FlowPrior.load(prior_path(ctx, "clean"), ctx.device)
    prior.tile = cfg.tile
    y_all = torch.stack(load_image_set(folder / DEGRADED["test_degraded"]))
    y_geom = load_geometry(folder / DEGRADED["test_degraded"])
    if (folder / DEGRADED["truth"]).exists():
        operators["oracle"] = load_arrays(folder / DEGRADED["truth"])

    metrics: dict[str, float] = {}
    for name, arrays in operators.items():
        x_geom = input_geometry(arrays, y_geom)
        pos = positions(x_geom, input_size(arrays, tuple(y_all.shape[-2:])))
        g = torch.Generator(device=ctx.device).manual_seed(cfg.seed)
        saved = BatchProgress(progress_file(ctx.ws, f"invert-{task}", name), ctx.run_key)
        done = saved.resume({"parts": [], "nfe": 0, "seconds": 0.0}, g)  # batches restored before a kill
        prior.nfe, t0 = done["nfe"], time.perf_counter() - done["seconds"]
        for i in range(len(done["parts"]) * cfg.batch_size, len(y_all), cfg.batch_size):
            sl = slice(i, i + cfg.batch_size)
            op = build_operator(arrays, pos[sl]).to(ctx.device)
            done["parts"].append(diffpir(y_all[sl].to(ctx.device), op, prior, sigma_n=sigma, steps=cfg.steps,
                                         lam=cfg.lam, zeta=cfg.zeta, cg_iters=cfg.cg_iters, generator=g).cpu())
            saved.save(done | {"nfe": prior.nfe, "seconds": time.perf_counter() - t0}, g)
        restored = done["parts"]
        seconds = time.perf_counter() - t0
        save_npz(ctx.ws.path("restored", task, f"{name}.npz"),
                 save_image_set(list(torch.cat(restored)), quantise=False, geometry=x_geom))
        suffix = "" if name == "learned" else f"/{name}"
        batches = -(-len(y_all) // cfg.batch_size)
        metrics |= {f"sec_per_image{suffix}": seconds / len(y_all), f"nfe{suffix}": prior.nfe / batches}
    for name in operators:  # finished: nothing left to resume
        progress_file(ctx.ws, f"invert-{task}", name).unlink(missing_ok=True)
    return metrics
