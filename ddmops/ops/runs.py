"""Reading runs back from the MLflow store: recent runs, and runs side by side.

A run reference is an MLflow run id, a DVC experiment name (tag ``ddmops.dvc_exp``, set
when `dvc exp run` ran the stage), a pipeline parent (``pipeline-<hash>`` or its id: all
its stage runs) or a stage run name (``learn-operator-deblur``: the latest such run).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ddmops.errors import DdmopsError
from ddmops.plots import picture_table
from ddmops.ops.tracking import TAG_PIPELINE, TAG_ROLE, TAG_STAGE, sqlite_file, use_tracking

HEADLINE = ("psnr/restored", "psnr/dcdp-ode", "kernel/ncc", "loss/val", "loss/dm", "psnr/dps", "data/test_images")


@dataclass(frozen=True)
class RunView:
    run_id: str
    stage: str
    status: str
    start_ms: int
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]


def _view(run) -> RunView:
    return RunView(run.info.run_id, run.data.tags.get(TAG_STAGE, run.info.run_name or ""), run.info.status,
                   run.info.start_time or 0, dict(run.data.metrics), dict(run.data.params), dict(run.data.tags))


def _client(uri: str):
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        raise DdmopsError(f"no MLflow store at {uri}: no stage has run in this workspace")
    use_tracking(uri)
    import mlflow
    return mlflow.MlflowClient()


def _stage_runs(client, filter_string: str) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=filter_string, order_by=["attributes.start_time DESC"],
                              max_results=1000) if exps else []
    return [r for r in runs if r.data.tags.get(TAG_ROLE) != "pipeline"]


def recent(uri: str, item: str | None = None, limit: int = 20) -> list[RunView]:
    """The latest stage runs (of one task or domain), newest first."""
    client = _client(uri)
    where = f"tags.`ddmops.item` = '{item}'" if item else ""
    return [_view(r) for r in _stage_runs(client, where)[:limit]]


def resolve(uri: str, ref: str, stage: str | None = None) -> list[RunView]:
    """The stage runs ``ref`` names (one per stage: the latest), optionally only ``stage``'s."""
    client = _client(uri)
    runs = []
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        from mlflow.exceptions import MlflowException
        try:
            run = client.get_run(ref)
        except MlflowException:
            raise DdmopsError(f"{ref}: no such MLflow run") from None
        parent = run.data.tags.get(TAG_ROLE) == "pipeline"
        runs = _stage_runs(client, f"tags.`{TAG_PIPELINE}` = '{run.data.tags[TAG_PIPELINE]}'") if parent else [run]
    else:
        for where in (f"tags.`ddmops.dvc_exp` = '{ref}'",
                      f"tags.`{TAG_PIPELINE}` = '{ref.removeprefix('pipeline-')}'",
                      f"tags.`{TAG_STAGE}` = '{ref}'"):
            runs = _stage_runs(client, where)
            if runs:
                break
    if stage:
        runs = [r for r in runs if r.data.tags.get(TAG_STAGE) == stage]
    if not runs:
        raise DdmopsError(f"{ref}: no MLflow run, DVC experiment or stage run of that name"
                          + (f" with stage {stage!r}" if stage else ""))
    latest: dict[str, object] = {}
    for r in runs:  # newest first
        latest.setdefault(r.data.tags.get(TAG_STAGE, r.info.run_name), r)
    return [_view(r) for r in sorted(latest.values(), key=lambda r: r.data.tags.get(TAG_STAGE, ""))]


def columns(groups: dict[str, list[RunView]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per group, its metrics and its params keyed ``stage: name`` when the groups span several
    stages, else ``name``; params equal in every group are left out."""
    several = len({r.stage for runs in groups.values() for r in runs}) > 1

    def flat(runs: list[RunView], attr: str) -> dict:
        return {(f"{r.stage}: {k}" if several else k): v for r in runs for k, v in getattr(r, attr).items()}
    metrics = {g: flat(runs, "metrics") for g, runs in groups.items()}
    params = {g: flat(runs, "params") for g, runs in groups.items()}
    keys = {k for p in params.values() for k in p}
    differ = {k for k in keys if len({str(p.get(k)) for p in params.values()}) > 1}
    return metrics, {g: {k: v for k, v in p.items() if k in differ} for g, p in params.items()}


def picture(uri: str, groups: dict[str, list[RunView]], out: Path, max_side: int = 480) -> Path:
    """One PNG: a column per group, a row per (stage, picture) that any of them logged at the
    top of its artifacts (kernels against truth, restoration grids, curves)."""
    client = _client(uri)
    cells: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, runs in groups.items():
            for r in runs:
                for art in client.list_artifacts(r.run_id):
                    if not art.is_dir and art.path.endswith(".png"):
                        local = client.download_artifacts(r.run_id, art.path, tmp)
                        img = Image.open(local).convert("RGB")
                        img.thumbnail((max_side, max_side))
                        cells.setdefault((r.stage, art.path), {})[label] = np.asarray(img)
    if not cells:
        raise DdmopsError("the chosen runs logged no pictures to compare")
    canvas = picture_table({f"{stage} / {name}": row for (stage, name), row in sorted(cells.items())}, list(groups))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out)
    return out
