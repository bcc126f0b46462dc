"""`ddmops psf ...`: manage measured PSF assets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Measured PSFs and PSF grids (DVC-tracked assets).")


@app.command("add")
def add(
    file: Annotated[Path, typer.Argument(help=".npy PSF (K, K) or PSF grid (Gy, Gx, K, K)")],
    name: Annotated[Optional[str], typer.Option(help="asset name (default: the file's stem)")] = None,
    normalise: Annotated[bool, typer.Option("--normalise", help="clip negatives and rescale each PSF to sum 1")] = False,
    params: Annotated[Path, typer.Option("--params", "-p")] = Path("params.yaml"),
) -> None:
    """Validate a measured PSF and add it to paths.psfs, tracked by DVC."""
    from cli.common import fail
    from ddmops.config import load_params
    from ddmops.errors import DdmopsError
    from ddmops.ops.psf_assets import add_psf, dvc_track
    from ddmops.ops.workspace import Workspace

    try:
        cfg = load_params(params)
        ws = Workspace(params.resolve().parent, cfg.paths)
        target = add_psf(file, ws.path("psfs"), name, normalise)
        note = dvc_track(target, ws.root)
    except DdmopsError as exc:
        fail(str(exc))
    Console().print(f"added {target} ({note})")
