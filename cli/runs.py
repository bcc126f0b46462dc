"""`ddmops runs` and `ddmops compare`: what the MLflow store holds, at a glance."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cli.common import ParamsOpt, fail


def register(app: typer.Typer) -> None:
    app.command("runs")(runs_command)
    app.command()(compare)


def _uri(params: Path) -> str:
    from ddmops.config import load_params
    from ddmops.ops.tracking import default_tracking_uri, store_root
    return default_tracking_uri(store_root(params.resolve().parent, load_params(params).tracking))


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def runs_command(
    task: Annotated[Optional[str], typer.Option("--task", "--domain", "-t", "-d",
                                                help="only runs of this task / domain")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """List the latest stage runs with their headline metrics."""
    from ddmops.errors import DdmopsError
    from ddmops.ops.runs import HEADLINE, recent
    try:
        found = recent(_uri(params), task, limit)
    except DdmopsError as exc:
        fail(str(exc))
    table = Table(title=f"latest runs{f' of {task}' if task else ''}")
    for col in ("run", "stage", "status", "started", "dvc exp", "headline metrics"):
        table.add_column(col)
    for r in found:
        started = datetime.datetime.fromtimestamp(r.start_ms / 1000).strftime("%Y-%m-%d %H:%M")
        head = "  ".join(f"{k}={r.metrics[k]:.4g}" for k in HEADLINE if k in r.metrics)
        table.add_row(r.run_id, r.stage, r.status, started, r.tags.get("ddmops.dvc_exp", ""), head)
    Console(width=200).print(table)


def compare(
    refs: Annotated[list[str], typer.Argument(help="run ids, DVC experiment names, pipeline-<hash> or stage run names")],
    stage: Annotated[Optional[str], typer.Option(help="only this stage's runs, e.g. learn-operator-deblur")] = None,
    out: Annotated[Path, typer.Option(help="PNG placing the runs' pictures side by side")] = Path("compare.png"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Metrics and differing params of several runs side by side; their pictures in one PNG."""
    from ddmops.errors import DdmopsError
    from ddmops.ops.runs import columns, picture, resolve
    if len(refs) < 2:
        fail("compare needs at least two runs or experiments")
    try:
        uri = _uri(params)
        groups = {ref: resolve(uri, ref, stage) for ref in refs}
        metrics, differing = columns(groups)
        png = picture(uri, groups, out)
    except DdmopsError as exc:
        fail(str(exc))
    table = Table(title="metrics (best per row in bold) and the params that differ (yellow)")
    table.add_column("")
    for ref in refs:
        table.add_column(ref, justify="right")
    for key in sorted({k for m in metrics.values() for k in m}):
        vals = [metrics[r].get(key) for r in refs]
        nums = [v for v in vals if v is not None]
        best = (min(nums) if any(w in key for w in ("loss", "mae", "sec", "nfe")) else max(nums)) if nums else None
        table.add_row(key, *[f"[bold]{_fmt(v)}[/]" if v is not None and v == best and len(nums) > 1 else _fmt(v)
                             for v in vals])
    for key in sorted({k for p in differing.values() for k in p}):
        table.add_row(f"[yellow]{key}[/]", *[f"[yellow]{_fmt(differing[r].get(key))}[/]" for r in refs])
    Console(width=200).print(table)
    Console().print(f"pictures: {png}")
