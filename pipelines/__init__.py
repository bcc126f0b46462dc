"""Stage functions: ``run(cfg, ctx) -> metrics``; the STAGES table names them.

dvc.yaml, MLproject and the CLI all reach them through :func:`pipelines.runner.run_stage`;
tuning calls the same functions with another config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ddmops.config import DDM4IP_TASKS, DOMAINS, TASKS
from ddmops.ops.workspace import Workspace
from pipelines import degrade, evaluate, invert, learn_operator, prepare, restore, train_prior


@dataclass(frozen=True)
class Stage:
    name: str
    section: str  # params.yaml section holding the stage's config
    run: Callable
    inputs: Callable[[Workspace, str | None], list[Path]]  # what a run (of an item) reads
    items: tuple[str, ...] = ()  # a stage run once per item
    help: str = ""
    distributed: bool = False  # may run under torchrun with several processes
    long: bool = False  # records system metrics (CPU, memory, GPU) while it runs
    curves: bool = False  # writes its metric curves for `dvc plots` (metrics/curves/<run>.json)
    # the config a run receives, from its section and item (default: section.<item>)
    select: Callable | None = None

    def config(self, section, item: str | None):
        if self.select is not None:
            return self.select(section, item)
        return getattr(section, item) if item else section

    def output_name(self, item: str | None) -> str:
        return f"{self.name}-{item}" if item else self.name


def _whole(section, item):
    return section


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "prepare", prepare.run, lambda ws, _: [ws.path("source")],
          help="the clean set, the pieces to degrade and the held-out test images"),
    Stage("degrade", "degrade", degrade.run, lambda ws, _: [ws.path("prepared")], items=DDM4IP_TASKS,
          select=_whole, help="observations through a task's unknown forward model (synthetic truth kept)"),
    Stage("train-prior", "train_prior", train_prior.run,
          lambda ws, d: [ws.path("prepared") if d == "clean" else ws.path("degraded", d)], items=DOMAINS,
          help="flow-matching prior of one domain (a task's observations: DDM4IP step 1; clean: restoration)",
          distributed=True, long=True, curves=True),
    Stage("learn-operator", "learn_operator", learn_operator.run, items=DDM4IP_TASKS,
          inputs=lambda ws, t: [ws.path("prepared"), ws.path("degraded", t), ws.prior(t).parent],
          help="the task's forward model by distribution matching (DDM4IP step 2)", long=True, curves=True),
    Stage("invert", "invert", invert.run, items=DDM4IP_TASKS,
          inputs=lambda ws, t: [ws.path("degraded", t), ws.prior("clean").parent, ws.operator(t).parent],
          help="restore the task's test images with the learned and the true operator (DDM4IP step 3)", long=True),
    Stage("evaluate", "evaluate", evaluate.run, items=DDM4IP_TASKS, select=_whole,
          inputs=lambda ws, t: [ws.path("prepared"), ws.path("degraded", t), ws.operator(t).parent,
                                ws.path("restored", t)],
          help="PSNR/SSIM and operator errors in one table"),
    Stage("restore-dcdp", "restore", restore.run_dcdp, lambda ws, _: [ws.path("prepared"), ws.prior("clean").parent],
          items=TASKS, select=restore.job, help="DCDP restoration (ODE and Tweedie purification) of one task",
          long=True),
    Stage("restore-dps", "restore", restore.run_dps, lambda ws, _: [ws.path("prepared"), ws.prior("clean").parent],
          items=TASKS, select=restore.job, help="DPS baseline on the same prior and problem", long=True),
)}
