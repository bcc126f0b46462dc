"""Stage functions: ``run(cfg, ctx) -> metrics``; the STAGES table names them.

dvc.yaml, MLproject and the CLI all reach them through :func:`pipelines.runner.run_stage`;
tuning calls the same functions with another config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ddmops.config import DOMAINS, TASKS
from ddmops.workspace import Workspace
from pipelines import evaluate, invert, learn_operator, prepare, restore, train_prior


@dataclass(frozen=True)
class Stage:
    name: str
    section: str  # params.yaml section holding the stage's config
    run: Callable
    inputs: Callable[[Workspace], list[Path]]  # files/folders whose content the stage reads
    items: tuple[str, ...] = ()  # a stage run once per item
    help: str = ""
    distributed: bool = False  # may run under torchrun with several processes
    # the config a run receives, from its section and item (default: section.<item>)
    select: Callable | None = None

    def config(self, section, item: str | None):
        if self.select is not None:
            return self.select(section, item)
        return getattr(section, item) if item else section

    def output_name(self, item: str | None) -> str:
        return f"{self.name}-{item}" if item else self.name


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "prepare", prepare.run, lambda ws: [ws.path("source")],
          help="unpaired clean / degraded sets and paired test images"),
    Stage("train-prior", "train_prior", train_prior.run, lambda ws: [ws.path("prepared")], items=DOMAINS,
          help="flow-matching prior of one domain (degraded: DDM4IP step 1; clean: for restoration)",
          distributed=True),
    Stage("learn-operator", "learn_operator", learn_operator.run,
          lambda ws: [ws.path("prepared"), ws.path("priors", "degraded")],
          help="the blur kernel by distribution matching (DDM4IP step 2)"),
    Stage("invert", "invert", invert.run,
          lambda ws: [ws.path("prepared"), ws.path("priors", "clean"), ws.path("operator")],
          help="restore the test images with the learned and the true kernel (DDM4IP step 3)"),
    Stage("evaluate", "evaluate", evaluate.run,
          lambda ws: [ws.path("prepared"), ws.path("operator"), ws.path("restored")],
          help="PSNR/SSIM and kernel errors in one table"),
    Stage("invert-dcdp", "restore", restore.run_dcdp, lambda ws: [ws.path("prepared"), ws.path("priors", "clean")],
          items=TASKS, select=restore.job, help="DCDP restoration (ODE and Tweedie purification) of one task"),
    Stage("invert-dps", "restore", restore.run_dps, lambda ws: [ws.path("prepared"), ws.path("priors", "clean")],
          items=TASKS, select=restore.job, help="DPS baseline on the same prior and problem"),
)}
