"""`ddmops tune`: Optuna studies whose trials run the pipeline's own stage functions in-process.

A DDM4IP task's trial runs learn-operator -> invert -> evaluate; a DCDP task's trial runs
one restoration method of invert-dcdp/invert-dps. Trials write under
``<paths.tune>/<study>/trial-NNNN`` (the pipeline's outputs are never touched) and keep
their checkpoints per parameter set, so a trial queued again after a kill resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from ddmops import study as studies
from ddmops.config import DDM4IP_TASKS, TUNED_TASKS, Params
from ddmops.device import pick_device
from ddmops.errors import ConfigError, DdmopsError, TrainingError
from ddmops.strict import from_dict, set_path, to_dict
from ddmops.tracking import MlflowTracker, default_tracking_uri, use_tracking
from ddmops.workspace import Workspace
from pipelines import STAGES, restore
from pipelines.context import StageContext
from pipelines.runner import call_stage, stage_config, stage_key

METHODS = ("dcdp-ode", "dcdp-tweedie", "dps")
# where each task's trial needs the pipeline to have run: dvc.yaml stages making them
UPSTREAM = {"ddm4ip": ("train-prior-clean", "train-prior@{task}"), "dcdp": ("train-prior-clean",)}


@dataclass(frozen=True)
class TuneOptions:
    task: str  # a params key: deblur, psf_grid, sr_kernel or a DCDP task
    n_trials: int = 20  # the study's size: a rerun with more continues it
    study: str = ""  # default: the task
    storage: str = ""  # SQLAlchemy URL; default: sqlite beside the MLflow store
    objective: str = "psnr"  # psnr | unsupervised
    pruner: str = "median"
    startup_trials: int = 5  # trials the median pruner lets finish before comparing
    method: str = "dcdp-ode"  # DCDP tasks: the method tuned
    workers: int = 1
    seed: int = 0  # sampler seed (worker i draws with seed + i)
    heartbeat: int = 30  # seconds; a trial silent for twice this is taken as killed and queued again
    device: str | None = None

    def __post_init__(self):
        if self.task not in TUNED_TASKS:
            raise ConfigError(f"--task {self.task!r}: use one of {', '.join(t.replace('_', '-') for t in TUNED_TASKS)}")
        if self.objective not in studies.OBJECTIVES:
            raise ConfigError(f"--objective {self.objective!r}: use one of {', '.join(studies.OBJECTIVES)}")
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.n_trials < 1 or self.workers < 1 or self.heartbeat < 1:
            raise ConfigError("--n-trials, --workers and --heartbeat must be at least 1")

    @property
    def study_name(self) -> str:
        return self.study or self.task

    @property
    def family(self) -> str:
        return "ddm4ip" if self.task in DDM4IP_TASKS else "dcdp"


def normalise_task(task: str) -> str:
    """CLI spelling (psf-grid) -> params key (psf_grid)."""
    return task.replace("-", "_")


def study_dir(params: Params, root: Path, opts: TuneOptions) -> Path:
    return Workspace(root, params.paths).path("tune", opts.study_name)


def missing_inputs(params: Params, root: Path, opts: TuneOptions) -> list[str]:
    """The dvc.yaml stages whose outputs a trial reads and that have not run."""
    ws = Workspace(root, params.paths)
    need = {"train-prior-clean": ws.path("priors", "clean"), f"train-prior@{opts.task}": ws.path("priors", opts.task)}
    targets = [s.format(task=opts.task) for s in UPSTREAM[opts.family]]
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


# -- one trial -------------------------------------------------------------------------------

class TrialTracker:
    """Forwards a stage's records to the trial's run under the stage's name, and reports the
    watched metric to Optuna, which may prune the trial there."""

    def __init__(self, inner, stage: str, report: Callable[[dict, int | None], None]):
        self.inner, self.prefix, self.report = inner, stage + "/", report

    @property
    def run_id(self):
        return self.inner.run_id

    def log_params(self, params):
        pass  # the trial's parameters are logged once, by the trial

    def log_metrics(self, metrics, step=None):
        self.inner.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step)
        self.report(metrics, step)

    def log_image(self, image, artifact_file):
        self.inner.log_image(image, self.prefix + artifact_file)

    def log_artifact(self, path, artifact_path=None):
        self.inner.log_artifact(path, self.prefix.rstrip("/") + (f"/{artifact_path}" if artifact_path else ""))

    def set_tags(self, tags):
        self.inner.set_tags(tags)


class Reporter:
    """Turns a stage's logged metrics into Optuna's intermediate values (and prunes)."""

    def __init__(self, trial: optuna.Trial, key: str | None, per_image: bool, transform=lambda v: v):
        self.trial, self.key, self.per_image, self.transform = trial, key, per_image, transform
        self.values: list[float] = []

    def __call__(self, metrics: dict, step: int | None) -> None:
        if self.key not in metrics or step is None:
            return
        self.values.append(self.transform(float(metrics[self.key])))
        value = sum(self.values) / len(self.values) if self.per_image else self.values[-1]
        if not math.isfinite(value):  # diverged: a failure, not a poor trial
            raise TrainingError(f"{self.key} is {value} at step {step}, not a finite number")
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: intermediate value {value:.4g}")


def trial_params(params: Params, values: dict[str, Any], folder: str, checkpoints: str) -> Params:
    """``params`` with the trial's values and its own output folders (relative to the workspace)."""
    data = to_dict(params)
    for key, value in values.items():
        set_path(data, key, value)
    for key in ("operator", "restored", "reports", "tasks", "metrics"):
        data["paths"][key] = f"{folder}/{key}"
    data["paths"]["checkpoints"] = checkpoints
    return from_dict(Params, data)


def _reporter(trial: optuna.Trial, opts: TuneOptions) -> tuple[str, Reporter]:
    """The stage whose curve the pruner watches, and the reporter."""
    if opts.family == "dcdp":
        if opts.objective == "psnr":
            return "restore", Reporter(trial, f"psnr/{opts.method}/per_image", per_image=True)
        return "restore", Reporter(trial, f"residual/{opts.method}/per_image", per_image=True,
                                   transform=lambda r: abs(r - 1))
    key = "kernel/ncc" if opts.objective == "psnr" else "score/observation_gap"
    return "learn-operator", Reporter(trial, key, per_image=False)


def run_trial(trial: optuna.Trial, params: Params, root: Path, opts: TuneOptions,
              tracker, device: torch.device) -> dict[str, float]:
    """Run the task's stages with the trial's params; -> every metric, named stage/metric."""
    values = studies.suggest(trial, getattr(params.tune, opts.task))
    tracker.log_params(values)
    base = Path(params.paths.tune) / opts.study_name
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    p = trial_params(params, values, f"{base}/trial-{trial.number:04d}", f"{base}/checkpoints/{digest}")
    ws = Workspace(root, p.paths)
    watched, reporter = _reporter(trial, opts)
    metrics: dict[str, float] = {}

    def ctx_for(name: str, run_key: str) -> StageContext:
        report = reporter if name == watched else (lambda m, s: None)
        return StageContext(ws=ws, tracker=TrialTracker(tracker, name, report), device=device, run_key=run_key,
                            progress=False, register=False)

    if opts.family == "ddm4ip":
        for name in ("learn-operator", "invert", "evaluate"):
            stage = STAGES[name]
            cfg = stage_config(stage, p, opts.task)
            run_key, _ = stage_key(stage, cfg, ws, opts.task)
            out = call_stage(stage, cfg, ctx_for(name, run_key), opts.task)
            metrics |= {f"{name}/{k}": v for k, v in out.items()}
        scores = {"psnr": metrics.get("evaluate/psnr/restored"),
                  "unsupervised": metrics.get("learn-operator/score/observation_gap")}
    else:
        stage = STAGES["invert-dcdp"]
        cfg = stage_config(stage, p, opts.task)
        run_key, _ = stage_key(stage, cfg, ws, opts.task)
        out = restore.run_methods([opts.method], cfg, ctx_for("restore", run_key), opts.task)
        metrics |= {f"restore/{k}": v for k, v in out.items()}
        scores = {"psnr": out.get(f"psnr/{opts.method}"), "unsupervised": out.get(f"discrepancy/{opts.method}")}
    for name, value in scores.items():
        if value is not None:
            trial.set_user_attr(name, float(value))
    return metrics | {f"objective/{k}": v for k, v in scores.items() if v is not None}


def objective_fn(params: Params, root: Path, opts: TuneOptions, parent: str, device: torch.device):
    """Optuna's objective: one nested MLflow run per trial. A failure is recorded (state, error
    text) and left to Optuna, which marks the trial failed; an interrupt queues the trial again."""
    def objective(trial: optuna.Trial) -> float:
        tags = {"ddmops.trial": str(trial.number), "ddmops.study": opts.study_name, "ddmops.task": opts.task,
                "ddmops.objective": opts.objective}
        try:
            with MlflowTracker.child(parent, f"trial-{trial.number:04d}", tags,
                                     finished=(optuna.TrialPruned,)) as tracker:
                tracker.log_params({"sampler_seed": trial.study.user_attrs.get("seed", opts.seed),
                                    "retry_of": studies.retried(trial.study.get_trials(deepcopy=False)[trial.number])})
                try:
                    metrics = run_trial(trial, params, root, opts, tracker, device)
                    tracker.log_metrics(metrics)
                    value = metrics.get(f"objective/{opts.objective}")
                    if value is None or not math.isfinite(value):
                        raise TrainingError(f"objective {opts.objective} is {value}, not a finite number")
                except optuna.TrialPruned:
                    tracker.set_tags({"ddmops.trial_state": "PRUNED"})
                    raise
                except Exception as exc:
                    trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
                    tracker.set_tags({"ddmops.trial_state": "FAIL"})
                    raise
                tracker.set_tags({"ddmops.trial_state": "COMPLETE"})
                return float(value)
        except KeyboardInterrupt:
            trial.study.enqueue_trial(trial.params, user_attrs={studies.RETRY_OF: trial.number})
            raise
    return objective


# -- workers ---------------------------------------------------------------------------------

def work(params: Params, root: Path, opts: TuneOptions, parent: str, worker: int = 0) -> None:
    """One worker: trials until the study holds ``n_trials`` (queued retries first)."""
    if opts.workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // opts.workers))
    use_tracking(default_tracking_uri(root))
    study = _open(params, root, opts, seed=opts.seed + worker)
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
    from ddmops.tracking import quiet_environment
    quiet_environment()
    work(load_params(Path(params_path), overrides), Path(root), opts, parent, worker)


def _open(params: Params, root: Path, opts: TuneOptions, seed: int) -> optuna.Study:
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
    if not getattr(params.tune, opts.task):
        raise ConfigError(f"params 'tune.{opts.task}' declares no search space")
    missing = missing_inputs(params, root, opts)
    if missing:
        run_upstream(root, missing, f"tuning {opts.task} needs the outputs of {', '.join(missing)}")
    storage = opts.storage or studies.default_storage(root)
    opts = replace(opts, storage=storage)
    study = _open(params, root, opts, seed=opts.seed)
    if "seed" not in study.user_attrs:
        study.set_user_attr("seed", opts.seed)
    parent = MlflowTracker.study_parent(
        root=root, experiment=params.tracking.experiment, study=f"{opts.study_name}-{study.user_attrs['uid']}",
        tags={"ddmops.task": opts.task, "ddmops.objective": opts.objective, "ddmops.storage": _safe_url(storage),
              "ddmops.sampler": f"TPESampler(seed={study.user_attrs['seed']} + worker)"})
    if opts.workers == 1:
        work_in = [None]
    else:
        ctx = multiprocessing.get_context("spawn")
        work_in = [ctx.Process(target=_worker_main, args=(str(params_path), overrides, str(root), opts, parent, i))
                   for i in range(opts.workers)]
        for p in work_in:
            p.start()
    done = _progress_loop(study, opts, work_in, params, root, parent, on_progress)
    failed = [p.exitcode for p in work_in if p is not None and p.exitcode]
    result = finish(study, params, root, opts, parent)
    if failed:
        raise DdmopsError(f"{len(failed)} worker(s) exited with an error (codes {failed}); "
                          f"{done} trials are in the study: rerun to continue it")
    return result


def _progress_loop(study, opts, procs, params, root, parent, on_progress) -> int:
    """Runs the in-process worker (one worker) or watches the processes; reports progress."""
    import threading

    stop = threading.Event()

    def watch():
        while not stop.wait(1.0):
            on_progress(_done(study), opts.n_trials)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        if procs == [None]:
            work(params, root, opts, parent)
        else:
            for p in procs:
                p.join()
    except KeyboardInterrupt:
        for p in procs:
            if p is not None:
                p.terminate()
        raise
    finally:
        stop.set()
        watcher.join()
    done = _done(study)
    on_progress(done, opts.n_trials)
    return done


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
    import mlflow
    import yaml

    folder = study_dir(params, root, opts)
    folder.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient()
    best = studies.best_trials(study, 1)
    best_file = None
    if best:
        b = best[0]
        best_file = folder / "best-params.yaml"
        header = (f"# best of study {opts.study_name!r} ({opts.objective} = {b.value:.6g}, trial {b.number}).\n"
                  f"# Apply: ddmops run STAGE -S @{best_file.relative_to(root)}\n"
                  f"#    or: dvc exp run $(ddmops set-args {best_file.relative_to(root)})\n")
        best_file.write_text(header + yaml.safe_dump(dict(b.params), sort_keys=True))
        client.set_tag(parent, "ddmops.best_trial", str(b.number))
        client.log_metric(parent, f"best/{opts.objective}", b.value, step=b.number)
        client.log_artifact(parent, str(best_file))
    plots = studies.save_plots(study, folder)
    for path in plots:
        client.log_artifact(parent, str(path))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pairs = [(t.user_attrs["psnr"], t.user_attrs["unsupervised"]) for t in complete
             if "psnr" in t.user_attrs and "unsupervised" in t.user_attrs]
    corr = studies.spearman([p for p, _ in pairs], [u for _, u in pairs])
    if corr == corr:
        client.log_metric(parent, "spearman/unsupervised_vs_psnr", corr)
    return TuneResult(study, parent, best_file, plots, corr)
