"""`ddmops tune`: Optuna studies whose trials run the pipeline's own stage functions in-process.

A DDM4IP task's trial runs learn-operator -> invert -> evaluate; a DCDP task's trial runs
one restoration method of restore-dcdp/restore-dps. Trials write under
``<paths.tune>/<study>/trial-NNNN`` (the pipeline's outputs are never touched) and keep
their checkpoints per parameter set, so a trial queued again after a kill resumes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import optuna
import torch
import yaml

from ddmops.ops import study as studies
from ddmops.config import Params
from ddmops.device import pick_device
from ddmops.errors import ConfigError, DdmopsError
from ddmops.ops.tracking import MlflowTracker, annotate_run, default_tracking_uri, store_root, use_tracking
from ddmops.ops.workspace import Workspace
from pipelines.trial import method_space, objective_fn
from pipelines.tune_options import TuneOptions, tuned_by

# where each task's trial needs the pipeline to have run: dvc.yaml stages making them
UPSTREAM = {"ddm4ip": ("train-prior-clean", "train-prior@{task}"), "dcdp": ("train-prior-clean",)}


def study_dir(params: Params, root: Path, opts: TuneOptions) -> Path:
    return Workspace(root, params.paths).path("tune", opts.study_name)


def missing_inputs(params: Params, root: Path, opts: TuneOptions) -> list[str]:
    """The dvc.yaml stages whose outputs a trial reads and that have not run."""
    ws = Workspace(root, params.paths)
    need = {"train-prior-clean": ws.prior("clean").parent, f"train-prior@{opts.task}": ws.prior(opts.task).parent}
    targets = [s.format(task=opts.task) for s in UPSTREAM[opts.pipeline]]
    return [t for t in targets if not any(need[t].glob("*"))]


def run_upstream(root: Path, stages: list[str], why: str) -> None:
    """``dvc repro`` the stages a study reads from (recorded in dvc.lock like any repro);
    outside a DVC project, say what to run."""
    if not (root / ".dvc").is_dir():
        raise DdmopsError(f"{why}: run `dvc repro {' '.join(stages)}` (or `ddmops run` each) first")
    print(f"{why}: running `dvc repro {' '.join(stages)}`", flush=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", *stages], cwd=root, env=env)
    if done.returncode != 0:
        raise DdmopsError(f"`dvc repro {' '.join(stages)}` failed (exit code {done.returncode})")


def work(params: Params, root: Path, opts: TuneOptions, parent: str, worker: int = 0) -> None:
    """One worker: trials until the study holds ``n_trials`` (queued retries first)."""
    if opts.workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // opts.workers))
    use_tracking(default_tracking_uri(store_root(root, params.tracking)))
    study = _open(root, opts, seed=opts.seed + worker)
    objective = objective_fn(params, root, opts, parent, pick_device(opts.device))
    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
        if not waiting and studies.counted(trials) >= opts.n_trials:
            return
        study.optimize(objective, n_trials=1, catch=(Exception,))


def _worker_main(params_path: str, overrides: list[str], root: str, opts: TuneOptions, parent: str,
                 worker: int) -> None:
    from ddmops.config import load_params
    from ddmops.ops.environment import quiet_environment
    quiet_environment()
    work(load_params(Path(params_path), overrides), Path(root), opts, parent, worker)


def _open(root: Path, opts: TuneOptions, seed: int) -> optuna.Study:
    return studies.open_study(opts.study_name, opts.storage or studies.default_storage(root),
                              studies.OBJECTIVES[opts.objective], seed=seed,
                              pruner=studies.make_pruner(opts.pruner, opts.startup_trials), heartbeat=opts.heartbeat)


@dataclass(frozen=True)
class TuneResult:
    study: optuna.Study
    parent_run: str
    best_file: Path | None
    plots: list[Path]
    correlation: float  # Spearman between the unsupervised score and PSNR over complete trials


def tune(params: Params, root: Path, opts: TuneOptions, params_path: Path, overrides: list[str],
         on_progress: Callable[[int, int], None] = lambda done, total: None) -> TuneResult:
    """Run (or continue) a study with ``opts.workers`` processes; record the results."""
    space, unread = method_space(params, opts)
    if not space:
        raise ConfigError(f"params 'tune.{opts.task}' declares no key that {tuned_by(opts)} runs with"
                          + (f"; it does not read {', '.join(unread)}" if unread else ""))
    if unread:  # another method's keys, ODE-only ones, or ones that dcdp.tweedie.* overrides
        print(f"{tuned_by(opts)} does not read {', '.join(unread)}: searching {', '.join(space)}", flush=True)
    missing = missing_inputs(params, root, opts)
    if missing:
        run_upstream(root, missing, f"tuning {opts.task} needs the outputs of {', '.join(missing)}")
    storage = opts.storage or studies.default_storage(root)
    opts = replace(opts, storage=storage)
    study = _open(root, opts, seed=opts.seed)
    if "seed" not in study.user_attrs:
        study.set_user_attr("seed", opts.seed)
    tags = {"ddmops.task": opts.task, "ddmops.objective": opts.objective, "ddmops.storage": _safe_url(storage),
            "ddmops.sampler": f"TPESampler(seed={study.user_attrs['seed']} + worker)",
            "ddmops.searched": ", ".join(space)}
    if opts.pipeline == "dcdp":  # one study, one method: their PSNRs are not one objective
        if "method" not in study.user_attrs:
            study.set_user_attr("method", opts.method)
        if study.user_attrs["method"] != opts.method:
            raise ConfigError(f"study {opts.study_name!r} tunes --method {study.user_attrs['method']}; "
                              f"choose another --study-name for {opts.method}")
        tags["ddmops.method"] = opts.method
    outer = os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run -e tune`: its run is the parent
    if outer:
        use_tracking(default_tracking_uri(store_root(root, params.tracking)))
        annotate_run(outer, tags={"ddmops.study": f"{opts.study_name}-{study.user_attrs['uid']}", **tags})
    parent = outer or MlflowTracker.study_parent(root=store_root(root, params.tracking),
                                                 experiment=params.tracking.experiment,
                                                 study=f"{opts.study_name}-{study.user_attrs['uid']}", tags=tags)
    procs = [multiprocessing.get_context("spawn").Process(
        target=_worker_main, args=(str(params_path), overrides, str(root), opts, parent, i))
        for i in range(opts.workers)] if opts.workers > 1 else []
    for p in procs:
        p.start()
    with _watching(study, opts.n_trials, on_progress):
        try:
            if procs:
                for p in procs:
                    p.join()
            else:
                work(params, root, opts, parent)
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            raise
    result = finish(study, params, root, opts, parent)
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise DdmopsError(f"{len(failed)} worker(s) exited with an error (codes {failed}); "
                          f"{_done(study)} trials are in the study: rerun to continue it")
    return result


@contextlib.contextmanager
def _watching(study: optuna.Study, total: int, on_progress: Callable[[int, int], None]):
    """Reports the study's finished trials every second (read from the storage: any worker's)."""
    stop = threading.Event()

    def watch():
        while not stop.wait(1.0):
            on_progress(_done(study), total)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        on_progress(_done(study), total)


def _done(study: optuna.Study) -> int:
    trials = study.get_trials(deepcopy=False)
    return studies.counted([t for t in trials if t.state in studies.FINISHED])


def _safe_url(url: str) -> str:
    """A storage URL without its password, for a tag."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsed>"


def finish(study: optuna.Study, params: Params, root: Path, opts: TuneOptions, parent: str) -> TuneResult:
    """Best params file, plots and the best trial on the parent run."""
    folder = study_dir(params, root, opts)
    folder.mkdir(parents=True, exist_ok=True)
    best = studies.best_trials(study, 1)
    best_file, tags, metrics = None, {}, {}
    if best:
        b = best[0]
        best_file = folder / "best-params.yaml"
        header = (f"# best of study {opts.study_name!r} ({opts.objective} = {b.value:.6g}, trial {b.number}).\n"
                  f"# Apply: ddmops run STAGE -S @{best_file.relative_to(root)}\n"
                  f"#    or: dvc exp run $(ddmops set-args {best_file.relative_to(root)})\n")
        best_file.write_text(header + yaml.safe_dump(dict(b.params), sort_keys=True))
        tags["ddmops.best_trial"] = str(b.number)
        metrics[f"best/{opts.objective}"] = b.value
    plots = studies.save_plots(study, folder)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pairs = [(t.user_attrs["psnr"], t.user_attrs["unsupervised"]) for t in complete
             if "psnr" in t.user_attrs and "unsupervised" in t.user_attrs]
    corr = studies.spearman([p for p, _ in pairs], [u for _, u in pairs])
    metrics["spearman/unsupervised_vs_psnr"] = corr
    annotate_run(parent, tags=tags, metrics=metrics, artifacts=[*([best_file] if best_file else []), *plots])
    return TuneResult(study, parent, best_file, plots, corr)
