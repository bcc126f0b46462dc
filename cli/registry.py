"""`ddmops registry promote|list|show` and `ddmops serve`: learned operators in the MLflow
model registry. MLflow is imported inside the commands, so `ddmops --help` stays fast."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cli.common import ParamsOpt, fail

registry_app = typer.Typer(no_args_is_help=True, help="Learned operators in the MLflow model registry "
                           "(aliases `candidate`, `champion`).")

TaskOpt = Annotated[Optional[str], typer.Option("--task", "-t", help="deblur, psf_grid or sr_kernel")]
NameOpt = Annotated[Optional[str], typer.Option("--name", "-n", help="a calibrated device (`ddmops calibrate`) "
                                                "instead of a task")]


def _connect(params: Path):
    """Load params and point MLflow at the workspace's store. -> (Params, ddmops.ops.registry, tracking URI)"""
    from ddmops.config import load_params
    from ddmops.ops import registry
    from ddmops.ops.tracking import default_tracking_uri, store_root, use_tracking
    cfg = load_params(params)
    uri = default_tracking_uri(store_root(params.resolve().parent, cfg.tracking))
    use_tracking(uri)
    return cfg, registry, uri


def _target(params: Path, task: str | None, name: str | None):
    """(task, device name or '', the gate) that a command addresses: a task of the synthetic
    pipeline, or a calibrated device (its own params' gate)."""
    from ddmops.config import load_params
    from ddmops.errors import DdmopsError
    from ddmops.ops import devices, registry
    root = params.resolve().parent
    if name:
        task = devices.task_of(root, name)
        gate = registry.gate_of(load_params(devices.folder(root, name) / "params.yaml").registry, task)
        return task, name, gate
    if not task:
        raise DdmopsError("give --task (deblur, psf_grid, sr_kernel) or --name (a calibrated device)")
    return task, "", registry.gate_of(load_params(params).registry, task)


def _guard(fn):
    """Run ``fn``; a DdmopsError becomes one red line and exit code 1."""
    from ddmops.errors import DdmopsError
    try:
        return fn()
    except DdmopsError as exc:
        fail(str(exc))


@registry_app.command()
def promote(
    task: TaskOpt = None,
    name: NameOpt = None,
    version: Annotated[Optional[str], typer.Option(help="promote this version (default: the candidate)")] = None,
    force: Annotated[bool, typer.Option(help="skip the gate (needs --reason)")] = False,
    reason: Annotated[str, typer.Option(help="why the gate is skipped; kept as a version tag")] = "",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Move alias `champion` to the candidate if its gate metric (params: registry.<task>) beats the
    champion's; exits 1 when the gate refuses."""
    def go():
        _, registry, _ = _connect(params)
        target, device, gate = _target(params, task, name)
        return registry.promote(target, gate, version=version, force=force, reason=reason, device=device)
    d = _guard(go)
    colour = {"promoted": "green", "refused": "yellow"}.get(d.outcome, "default")
    Console().print(f"{d.model} v{d.version}: [{colour}]{d.outcome}[/]: {d.message}", highlight=False)
    if d.outcome == "refused":
        raise typer.Exit(1)


@registry_app.command("list")
def list_(task: Annotated[Optional[str], typer.Option("--task", "-t", help="one task (default: all)")] = None,
          name: NameOpt = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Versions of each task's (or a calibrated device's) model: aliases, gate metric, source run, data hash."""
    def go():
        cfg, registry, _ = _connect(params)
        if name:
            target, device, gate = _target(params, None, name)
            return registry, [(target, device, gate.metric, registry.versions(target, device))]
        tasks = [task] if task else list(registry.MODEL_NAMES)
        return registry, [(t, "", registry.gate_of(cfg.registry, t).metric, registry.versions(t)) for t in tasks]
    registry, found = _guard(go)
    out = Console()
    for target, device, metric, mvs in found:
        if not mvs and not (task or name):
            continue
        table = Table("version", "aliases", metric, "source run", "data hash",
                      title=f"{registry.model_name(target, device)} (task {target})")
        for mv, aliases in mvs:
            value = registry.metric_of(mv, metric)
            table.add_row(str(mv.version), ", ".join(aliases), "-" if value is None else f"{value:.6g}",
                          (mv.run_id or "")[:8], mv.tags.get(registry.TAG_DATA_HASH, "")[:8])
        out.print(table)
    if not any(mvs for *_, mvs in found):
        out.print("no registered operator versions (run `ddmops run learn-operator` or `dvc repro`)")


@registry_app.command()
def show(task: TaskOpt = None, name: NameOpt = None,
         alias: Annotated[str, typer.Option(help="the version with this alias")] = "champion",
         version: Annotated[Optional[str], typer.Option(help="this version instead of an alias")] = None,
         params: ParamsOpt = Path("params.yaml")) -> None:
    """One version: aliases, source run, data hashes, metrics, promotion record."""
    def go():
        _, registry, _ = _connect(params)
        target, device, _ = _target(params, task, name)
        model = registry.model_name(target, device)
        return registry.model_version(f"models:/{model}/{version}" if version else f"models:/{model}@{alias}")
    mv = _guard(go)
    table = Table("field", "value", title=f"{mv.name} v{mv.version}")
    for key, value in [("aliases", ", ".join(sorted(mv.aliases))), ("source run", mv.run_id or ""),
                       ("created", _when(mv)), ("model", mv.source), *sorted(mv.tags.items())]:
        table.add_row(key, str(value))
    Console().print(table)


def serve(
    task: TaskOpt = None,
    name: NameOpt = None,
    alias: Annotated[str, typer.Option(help="serve the version with this alias")] = "champion",
    port: Annotated[int, typer.Option()] = 5001,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Serve a task's operator over HTTP with `mlflow models serve` (Ctrl-C stops it)."""
    import subprocess

    from ddmops.ops.model_server import serve_command, serve_env

    def go():
        _, registry, tracking = _connect(params)
        target, device, _ = _target(params, task, name)
        return tracking, registry.model_version(f"models:/{registry.model_name(target, device)}@{alias}")
    tracking, mv = _guard(go)
    Console().print(f"serving {mv.name}@{alias} (version {mv.version}) on http://{host}:{port}/invocations\n"
                    f"  curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' "
                    "-d '{\"inputs\": [{\"kind\": \"psf_at\", \"x\": 0.5, \"y\": 0.5}]}'", highlight=False,
                    soft_wrap=True)
    model = f"models:/{mv.name}/{mv.version}"  # pinned: the alias may move while this server runs
    try:
        code = subprocess.call(serve_command(model, host, port), env=serve_env(tracking))
    except KeyboardInterrupt:  # Ctrl-C reached the server too; it has stopped
        code = 130
    raise typer.Exit(code)


def _when(mv) -> str:
    return datetime.datetime.fromtimestamp(mv.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")


def register(app: typer.Typer) -> None:
    """Add `registry` and `serve` to the main app."""
    app.add_typer(registry_app, name="registry")
    app.command()(serve)
