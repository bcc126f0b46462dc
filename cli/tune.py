"""`ddmops tune` (an Optuna study over a task's stages) and `ddmops set-args` (a best-params
file as `-S` arguments for `dvc exp run`)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cli.common import ParamsOpt, SetOpt, fail


def register(app: typer.Typer) -> None:
    app.command()(tune)
    app.command("set-args")(set_args)


def tune(
    task: Annotated[str, typer.Option("--task", "-t", help="deblur, psf-grid, sr-kernel (DDM4IP) or a DCDP task: "
                                      "gaussian-deblur, motion-deblur, nonlinear-deblur, inpainting, superres, "
                                      "phase-retrieval")],
    n_trials: Annotated[int, typer.Option(help="trials the study should hold; rerun with more to continue")] = 20,
    study_name: Annotated[Optional[str], typer.Option(
        help="resume or name a study (default: the task; DCDP tasks: TASK-METHOD)")] = None,
    storage: Annotated[Optional[str], typer.Option(
        help="SQLAlchemy URL of the Optuna storage, e.g. postgresql://user:pw@host/optuna (default: "
             "sqlite optuna.db beside the MLflow store)")] = None,
    objective: Annotated[str, typer.Option(help="psnr (needs synthetic truth) or unsupervised (no clean/degraded "
                                           "pairs: observation gap for DDM4IP, discrepancy for DCDP)")] = "psnr",
    pruner: Annotated[str, typer.Option(help="median, hyperband or none")] = "median",
    startup_trials: Annotated[int, typer.Option(help="trials the median pruner lets finish first")] = 5,
    method: Annotated[str, typer.Option(help="DCDP tasks: dcdp-ode, dcdp-tweedie or dps")] = "dcdp-ode",
    workers: Annotated[int, typer.Option(help="worker processes on this machine (same storage)")] = 1,
    seed: Annotated[int, typer.Option(help="sampler seed (worker i uses seed + i)")] = 0,
    heartbeat: Annotated[int, typer.Option(help="seconds between trial heartbeats; a trial silent for twice "
                                           "this is taken as killed and queued again")] = 30,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: GPU if present)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Tune a task's hyperparameters (search space: params.yaml `tune.<task>`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ddmops.ops.environment import quiet_environment
    quiet_environment()
    from ddmops.config import load_params
    from ddmops.errors import DdmopsError
    from pipelines.tune_options import TuneOptions, normalise_task
    from pipelines.tune import tune as run_tune

    try:
        cfg = load_params(params, overrides)
        opts = TuneOptions(task=normalise_task(task), n_trials=n_trials, study=study_name or "",
                           storage=storage or "", objective=objective, pruner=pruner, startup_trials=startup_trials,
                           method=method, workers=workers, seed=seed, heartbeat=heartbeat, device=device)
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), disable=not progress, transient=False) as bar:
            handle = bar.add_task(f"tune {opts.study_name}", total=n_trials)
            result = run_tune(cfg, params.resolve().parent, opts, params.resolve(), list(overrides or []),
                              on_progress=lambda done, total: bar.update(handle, completed=done))
    except DdmopsError as exc:
        fail(str(exc))
    _summary(result, opts)


def _summary(result, opts) -> None:
    from ddmops.ops.study import best_trials
    from optuna.trial import TrialState

    out = Console()
    trials = result.study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    out.print(f"study {opts.study_name!r}: " + ", ".join(f"{n} {s.name.lower()}" for s, n in states.items()),
              highlight=False)
    best = best_trials(result.study, 5)
    if best:
        keys = list(best[0].params)
        table = Table("trial", opts.objective, *[".".join(k.split(".")[-2:]) for k in keys], title="best trials")
        for t in best:
            table.add_row(str(t.number), f"{t.value:.4g}", *[_fmt(t.params.get(k, "-")) for k in keys])
        out.print(table)
    if result.best_file:
        out.print(f"best params: {result.best_file}")
    if result.correlation == result.correlation:
        out.print(f"unsupervised score vs PSNR over complete trials: Spearman {result.correlation:+.2f}")
    out.print(f"MLflow parent run: {result.parent_run}")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def set_args(file: Annotated[Path, typer.Argument(help="a best-params YAML file (dotted key: value)")]) -> None:
    """Print a best-params file as `-S key=value` arguments: dvc exp run $(ddmops set-args FILE)."""
    from ddmops.config import expand_overrides
    from ddmops.errors import DdmopsError
    try:
        items = expand_overrides([f"@{file}"])
    except DdmopsError as exc:
        fail(str(exc))
    print(" ".join(f"-S {shlex.quote(i)}" for i in items))
