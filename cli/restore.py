"""`ddmops restore`: restore your own photos with a learned (or measured) operator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cli.common import ParamsOpt, err, fail
from pipelines.photos import MODEL_ERROR


def register(app: typer.Typer) -> None:
    app.command()(restore)


def restore(
    images: Annotated[list[Path], typer.Argument(help="photos and folders of photos (PNG, JPEG, TIFF, ...)")],
    operator: Annotated[str, typer.Option(help="models:/<name>@<alias>, models:/<name>/<version>, runs:/..., "
                                          "or an operator file or folder")],
    out: Annotated[Path, typer.Option(help="folder for the restored photos (same names, PNG / 16-bit TIFF)")],
    method: Annotated[str, typer.Option(help="pnp (default), pnp-bm3d, diffpir, dcdp-ode, dcdp-tweedie or dps "
                                        "(settings: params invert.<task>)")] = "pnp",
    prior: Annotated[Optional[Path], typer.Option(help="clean prior (default: this workspace's, "
                                                  "models/priors/clean/prior.safetensors)")] = None,
    tile: Annotated[Optional[int], typer.Option(
        help="the prior sees larger photos as blended tiles of this side (default: twice the prior's training "
             "patch; 0: whole photos, slower and no better)")] = None,
    noise_sigma: Annotated[Optional[float], typer.Option(
        help="the photos' noise std in [-1, 1] units (default: estimated per photo)")] = None,
    model_error: Annotated[float, typer.Option(
        help="what the operator cannot explain (gamma-encoded photos, compression, a learned PSF's error) as a "
             "noise std in [-1, 1] units, added to the noise in quadrature; 0: trust the operator exactly")
    ] = MODEL_ERROR,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: GPU if present)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Restore photos of any size with an operator and the clean prior; one MLflow run."""
    from ddmops.config import INVERT_METHODS, load_params
    from ddmops.device import pick_device
    from ddmops.errors import DdmopsError
    from ddmops.flow.prior import FlowPrior
    from ddmops.loop.progress import progress_bar
    from ddmops.ops.environment import quiet_environment
    from ddmops.ops.hashing import config_digest, file_md5
    from ddmops.ops.tracking import MlflowTracker, default_tracking_uri, store_root, use_tracking
    from ddmops.ops.workspace import Workspace
    from pipelines.operators import resolve_operator
    from pipelines.photos import PhotoJob, auto_tile, check_photos, restore_photos

    quiet_environment()
    root = params.resolve().parent
    try:
        cfg = load_params(params)
        if method not in INVERT_METHODS:
            raise DdmopsError(f"--method {method!r}: use one of {', '.join(INVERT_METHODS)}")
        if model_error < 0 or (noise_sigma is not None and noise_sigma < 0):
            raise DdmopsError("--model-error and --noise-sigma are standard deviations: give values >= 0")
        photos = check_photos(tuple(images), out)  # before any run or model is opened
        use_tracking(default_tracking_uri(store_root(root, cfg.tracking)))  # models:/ URIs: this workspace's registry
        op, provenance = resolve_operator(operator, root)
        prior_file = prior or Workspace(root, cfg.paths).prior("clean")
        dev = pick_device(device)
        flow = FlowPrior.load(prior_file, dev)
        job = PhotoJob(tuple(images), out, method, auto_tile(flow) if tile is None else tile, noise_sigma, model_error)
        settings = {"operator": provenance, "prior": file_md5(prior_file)}
        digests = {str(p): file_md5(p) for p in photos if p.is_file()}
        tags = {**provenance, "ddmops.method": method, "ddmops.prior": str(prior_file), "ddmops.device": str(dev)}
        with MlflowTracker.open(root=root, experiment=cfg.tracking.experiment, stage="restore-photos",
                                run_key=config_digest(settings, method, job.tile, noise_sigma, model_error, digests),
                                pipeline="restore", tags=tags, datasets=digests,
                                store=store_root(root, cfg.tracking)) as tracker:
            tracker.log_params({"method": method, "tile": job.tile, "noise_sigma": noise_sigma,
                                "model_error": model_error, "operator": operator, "photos": len(photos),
                                "out": str(out)})
            with progress_bar("restore", len(photos), enabled=progress) as bar:
                result = restore_photos(job, photos, digests, op, flow, getattr(cfg.invert, op.task), tracker, dev,
                                        settings, on_photo=lambda i, n, name: bar.update(i, name))
                bar.update(len(photos))
            tracker.log_metrics({"seconds_per_megapixel": result.seconds_per_megapixel,
                                 "residual/restored": result.residual, "photos/written": len(result.written),
                                 "photos/skipped": len(result.skipped), "photos/failed": len(result.failed)})
    except DdmopsError as exc:
        fail(str(exc))
    Console().print(f"restored {len(result.written)} photo(s) into {out} ({len(result.skipped)} already done); "
                    f"{result.seconds_per_megapixel:.2f} s per megapixel, residual {result.residual:.3g} x sigma",
                    highlight=False, soft_wrap=True)
    if result.failed:
        for why in result.failed.values():
            err.print(f"[bold red]not restored:[/] {why}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
