"""The `ddmops` command line. Heavy imports (torch, mlflow) happen inside commands so
`ddmops --help` stays fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cli.common import ParamsOpt, SetOpt, fail

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ddmops: unsupervised imaging inverse problems (DDM4IP, DCDP) with DVC, MLflow and Optuna.")


@app.command()
def run(
    stage: Annotated[str, typer.Argument(help="stage name (see `ddmops stages`)")],
    item: Annotated[Optional[str], typer.Option(
        "--domain", "--task", "--item", "-d", "-t",
        help="item of a per-item stage: train-prior --domain clean, restore-dcdp --task inpainting")] = None,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: GPU if present)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    nan_policy: Annotated[str, typer.Option(help="non-finite loss in training: stop (keep the last good "
                                            "checkpoint) or skip-batch")] = "stop",
) -> None:
    """Run one pipeline stage (what `dvc repro` calls)."""
    from ddmops.ops.environment import quiet_environment
    quiet_environment()
    from ddmops.config import load_params
    from ddmops.errors import DdmopsError
    from ddmops.loop.guard import NAN_POLICIES
    from pipelines.runner import run_stage

    try:
        cfg = load_params(params, overrides)
        if nan_policy not in NAN_POLICIES:
            raise DdmopsError(f"--nan-policy {nan_policy!r}: use one of {', '.join(NAN_POLICIES)}")
        metrics = run_stage(stage, cfg, params.resolve().parent, item=item, device=device, progress=progress,
                            nan_policy=nan_policy)
    except DdmopsError as exc:
        fail(str(exc))
    out = Console()
    for key, value in sorted(metrics.items()):
        out.print(f"  {key:32s} {value:.6g}", highlight=False)


@app.command()
def stages() -> None:
    """List the pipeline stages."""
    from rich.table import Table

    from pipelines import STAGES
    table = Table("stage", "params section", "items", "what it does")
    for s in STAGES.values():
        table.add_row(s.name, s.section, ", ".join(s.items), s.help)
    Console().print(table)


@app.command()
def check(params: ParamsOpt = Path("params.yaml"), overrides: SetOpt = None) -> None:
    """Validate a params file (unknown keys, types, ranges) without running anything."""
    from ddmops.config import load_params
    from ddmops.errors import DdmopsError
    try:
        load_params(params, overrides)
    except DdmopsError as exc:
        fail(str(exc))
    Console().print(f"{params}: ok")


@app.command()
def ui(
    params: ParamsOpt = Path("params.yaml"),
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 5000,
) -> None:
    """Open the MLflow UI on this workspace's tracking store (Ctrl-C stops it)."""
    from ddmops.config import load_params
    from ddmops.errors import DdmopsError
    from ddmops.ops.environment import quiet_environment
    from ddmops.ops.tracking import default_tracking_uri, store_root
    quiet_environment()
    try:
        root = store_root(params.resolve().parent, load_params(params).tracking)
    except DdmopsError as exc:
        fail(str(exc))
    uri = default_tracking_uri(root)
    Console().print(f"MLflow UI on http://{host}:{port}/#/experiments  (store: {uri})")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", (root / "mlruns").resolve().as_uri()]
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


def _register_subcommands() -> None:
    from cli import device, psf, registry, restore, runs, team, tune
    app.add_typer(psf.app, name="psf")
    device.register(app)
    restore.register(app)
    tune.register(app)
    runs.register(app)
    team.register(app)
    registry.register(app)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
