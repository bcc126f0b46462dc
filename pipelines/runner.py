"""Run one stage the way dvc.yaml, MLproject and the CLI all do: tracked, described, recorded."""

from __future__ import annotations

import os
import platform
import subprocess
from collections import Counter
from pathlib import Path

import torch

import ddmops
from ddmops.config import Params
from ddmops.device import pick_device
from ddmops.loop.distributed import from_environment, shutdown
from ddmops.errors import ConfigError
from ddmops.ops.hashing import config_digest, path_digest
from ddmops.io import write_json
from ddmops.plots import curves_chart
from ddmops.strict import flatten, to_dict
from ddmops.ops.tracking import MlflowTracker, store_root
from ddmops.ops.workspace import Workspace
from pipelines import STAGES, Stage
from pipelines.context import StageContext


def resolve(name: str, item: str | None) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    stage = STAGES[name]
    if stage.items and item not in stage.items:
        raise ConfigError(f"stage {name!r} needs one of {list(stage.items)} (got {item!r})")
    if not stage.items and item is not None:
        raise ConfigError(f"stage {name!r} takes no item (got {item!r})")
    return stage


def stage_config(stage: Stage, params: Params, item: str | None):
    return stage.config(getattr(params, stage.section), item)


def logged_params(stage: Stage, params: Params, cfg, item: str | None) -> dict:
    """What a run reads, keyed as in params.yaml (``restore.inpainting.dcdp.lr``, not the job's field)."""
    if stage.select is None:
        return {f"{stage.section}.{item}" if item else stage.section: to_dict(cfg)}
    section = to_dict(getattr(params, stage.section))  # less the other items' subsections
    return {stage.section: {k: v for k, v in section.items() if k == item or k not in stage.items}}


def run_stage(name: str, params: Params, root: Path, item: str | None = None, device: str | None = None,
              progress: bool = True, nan_policy: str = "stop") -> dict[str, float]:
    """Run stage ``name`` in workspace ``root`` inside an MLflow run; write its metrics file.

    Under torchrun (WORLD_SIZE > 1) a distributed stage joins the process group; only
    rank 0 tracks and writes.
    """
    stage = resolve(name, item)
    cfg = stage_config(stage, params, item)
    ws = Workspace(Path(root), params.paths)
    dev = pick_device(device)
    dist = from_environment(dev)
    if dist.world > 1 and not stage.distributed:
        raise ConfigError(f"stage {name!r} does not run under torchrun with several processes")
    if dist.world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
    run_key, digests = stage_key(stage, cfg, ws, item)
    try:
        if not dist.is_main:  # untracked helper process: its results are rank 0's
            _call(stage, cfg, StageContext(ws=ws, device=dev, run_key=run_key, progress=False, dist=dist,
                                           nan_policy=nan_policy), item)
            return {}
        tags = {"ddmops.item": item or "", "ddmops.device": str(dev), "ddmops.processes": str(dist.world),
                "ddmops.dvc_exp": os.environ.get("DVC_EXP_NAME", ""),  # set by `dvc exp run`
                "ddmops.git_commit": _git_commit(ws.root), "ddmops.version": ddmops.__version__,
                "ddmops.torch": torch.__version__, "ddmops.python": platform.python_version(),
                **{f"ddmops.data.{k}": v for k, v in digests.items()}}
        with MlflowTracker.open(root=ws.root, experiment=params.tracking.experiment, stage=stage.output_name(item),
                                run_key=run_key, pipeline=config_digest(to_dict(params)), tags=tags,
                                datasets=digests, system_metrics=stage.long,
                                store=store_root(ws.root, params.tracking)) as tracker:
            tracker.log_params(flatten({**logged_params(stage, params, cfg, item), "paths": to_dict(params.paths)}))
            ctx = StageContext(ws=ws, tracker=tracker, device=dev, run_key=run_key, progress=progress, dist=dist,
                               nan_policy=nan_policy)
            metrics = _call(stage, cfg, ctx, item)
            tracker.log_metrics(metrics)
            if stage.curves:
                _write_curves(ws, tracker, stage.output_name(item))
            write_json(ws.metrics_file(stage.output_name(item)), metrics)
        return metrics
    finally:
        shutdown()


def stage_key(stage: Stage, cfg, ws: Workspace, item: str | None) -> tuple[str, dict[str, str]]:
    """The run key of a stage run (stage, item, config, input digests) and the digests."""
    digests = {ws.key(p): path_digest(p) for p in stage.inputs(ws, item)}
    return config_digest(stage.name, item, to_dict(cfg), digests), digests


def _call(stage: Stage, cfg, ctx: StageContext, item: str | None) -> dict[str, float]:
    return {k: float(v) for k, v in stage.run(cfg, ctx, *([item] if item else [])).items()}


def _write_curves(ws: Workspace, tracker: MlflowTracker, name: str) -> None:
    """The run's metric curves as a picture in the run, and for `dvc plots` as JSON rows. DVC
    needs rows with the same fields, so the file holds the metrics logged together at every
    log step (the training curves); sparser ones (held-out loss) are in the picture only."""
    rows = tracker.curves()
    if rows:
        tracker.log_image(curves_chart(rows, name), "curves.png")
    steps: dict[str, frozenset] = {}
    for r in rows:
        for k in r:
            steps[k] = steps.get(k, frozenset()) | {r["step"]}
    groups = Counter(v for k, v in steps.items() if k != "step")
    common = max(groups, key=lambda v: (groups[v], len(v))) if groups else frozenset()
    keys = ["step", *sorted(k for k, v in steps.items() if v == common and k != "step")]
    write_json(ws.path("metrics", "curves", f"{name}.json"),
               [{k: r[k] for k in keys} for r in rows if r["step"] in common])


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""
