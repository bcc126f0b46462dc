"""`ddmops calibrate`: a device's operator from its own photos (see ddmops/ops/devices.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cli.common import ParamsOpt, fail


def register(app: typer.Typer) -> None:
    app.command()(calibrate)


def calibrate(
    name: Annotated[str, typer.Option(help="the device's name, e.g. lens-a (its model: ddmops-psf-<name>)")],
    task: Annotated[str, typer.Option(help="deblur (one PSF), psf-grid (a PSF field) or sr-kernel")],
    observed: Annotated[Path, typer.Option(help="folder of the device's photos (one size; never resized)")],
    clean: Annotated[Path, typer.Option(help="folder of unrelated sharp photos at the same pixel scale")],
    grid: Annotated[Optional[tuple[int, int]], typer.Option(help="psf-grid: PSFs per column and row, e.g. 8 8")] = None,
    kernel_size: Annotated[Optional[int], typer.Option(help="PSF side in pixels (odd), e.g. 27")] = None,
    factor: Annotated[Optional[int], typer.Option(help="sr-kernel: the scale factor")] = None,
    noise_sigma: Annotated[Optional[float], typer.Option(
        help="noise std in [-1, 1] units (default: estimated from the photos)")] = None,
    promote: Annotated[bool, typer.Option(help="apply the gate and move alias champion")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Calibrate a device: learn its operator from its photos through DVC, register it by name."""
    from ddmops.config import load_params
    from ddmops.errors import DdmopsError
    from ddmops.ops import devices
    from ddmops.ops.environment import quiet_environment
    from ddmops.strict import from_dict
    from pipelines.tune_options import normalise_task

    quiet_environment()
    out = Console()
    root = params.resolve().parent
    try:
        base = load_params(params)
        spec = devices.DeviceSpec(name=devices.check_name(name), task=normalise_task(task), observed=observed,
                                  clean=clean, kernel_size=kernel_size, grid=grid, factor=factor,
                                  noise_sigma=noise_sigma)
        if spec.task not in ("deblur", "psf_grid", "sr_kernel"):
            raise DdmopsError(f"--task {task!r}: use deblur, psf-grid or sr-kernel")
        import yaml
        channels = devices.check_inputs(spec, getattr(base.train_prior, spec.task).patch_size,
                                        base.degrade.observations.tile_size)
        config = devices.device_params(yaml.safe_load(params.read_text()), spec, channels)
        from ddmops.config import Params
        from_dict(Params, config)  # the options make valid params, checked before anything is written
        dvc = devices.dvc_runner(root)
        where = devices.create(root, spec, config, dvc)
        rel = where.relative_to(root)
        out.print(f"calibrating {name!r} ({spec.task}) in {rel}: `dvc repro {rel}/dvc.yaml`", highlight=False, soft_wrap=True)
        if dvc("repro", str(rel / "dvc.yaml"), stream=True).returncode:
            raise DdmopsError(f"`dvc repro {rel}/dvc.yaml` failed (see above); fix, then rerun it or this command")
        version, decision = _register(root, base, spec, promote)
    except DdmopsError as exc:
        fail(str(exc))
    out.print(f"registered {version.name} version {version.version} (run {version.run_id}), "
              f"score/observation_gap {version.tags.get('ddmops.metric.score/observation_gap', '?')}", highlight=False, soft_wrap=True)
    if decision is not None:
        out.print(f"promote: {decision.outcome}: {decision.message}", highlight=False, soft_wrap=True)
    out.print("next:\n"
              f"  ddmops registry promote --name {name}      # champion <- this version if its gate says so\n"
              f"  ddmops serve --name {name}                  # its PSFs over HTTP\n"
              f"  ddmops restore PHOTOS... --operator models:/{version.name}@champion \\\n"
              f"      --prior {rel}/models/priors/clean/prior.safetensors --out restored/", highlight=False, soft_wrap=True)
    if decision is not None and decision.outcome == "refused":
        raise typer.Exit(1)


def _register(root: Path, base, spec, promote: bool):
    """The version just registered, and the gate's decision when asked to promote."""
    from ddmops.config import GateConfig
    from ddmops.errors import DdmopsError
    from ddmops.ops import registry
    from ddmops.ops.tracking import default_tracking_uri, store_root, use_tracking

    use_tracking(default_tracking_uri(store_root(root, base.tracking)))
    found = registry.versions(spec.task, device=spec.name)
    if not found:
        raise DdmopsError(f"learn-operator registered no version of {registry.model_name(spec.task, spec.name)}")
    newest = found[0][0]
    decision = registry.promote(spec.task, GateConfig(metric="score/observation_gap", mode="min"),
                                device=spec.name) if promote else None
    return newest, decision
