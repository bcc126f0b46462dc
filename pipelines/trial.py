"""One tuning trial: the task's stage functions in-process with the trial's values, tracked
in a nested MLflow run, reporting the pruner's metric as the stages log it."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from ddmops.ops import study as studies
from ddmops.config import ParamSpec, Params
from ddmops.errors import TrainingError
from ddmops.strict import from_dict, set_path, to_dict
from ddmops.ops.tracking import MlflowTracker
from ddmops.ops.workspace import Workspace
from pipelines import STAGES, restore
from pipelines.context import StageContext
from pipelines.runner import stage_config, stage_key
from pipelines.tune_options import TuneOptions


class TrialTracker:
    """Forwards a stage's records to the trial's run under the stage's name, and reports the
    watched metric to Optuna, which may prune the trial there."""

    def __init__(self, inner, stage: str, report: Callable[..., None]):
        self.inner, self.prefix, self.report = inner, stage + "/", report

    @property
    def run_id(self):
        return self.inner.run_id

    def log_params(self, params):
        pass  # the trial's parameters are logged once, by the trial

    def log_metrics(self, metrics, step=None):
        self.inner.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step)
        self.report(metrics, step, self.inner.log_metrics)

    def log_image(self, image, artifact_file):
        self.inner.log_image(image, self.prefix + artifact_file)

    def log_artifact(self, path, artifact_path=None):
        self.inner.log_artifact(path, self.prefix.rstrip("/") + (f"/{artifact_path}" if artifact_path else ""))

    def set_tags(self, tags):
        self.inner.set_tags(tags)


class Reporter:
    """Turns a stage's logged metrics into Optuna's intermediate values, logged to the trial's
    run as ``objective/intermediate``, and prunes."""

    def __init__(self, trial: optuna.Trial, key: str | None, per_image: bool, transform=lambda v: v):
        self.trial, self.key, self.per_image, self.transform = trial, key, per_image, transform
        self.values: list[float] = []

    def __call__(self, metrics: dict, step: int | None, log: Callable) -> None:
        if self.key not in metrics or step is None:
            return
        self.values.append(self.transform(float(metrics[self.key])))
        value = sum(self.values) / len(self.values) if self.per_image else self.values[-1]
        if not math.isfinite(value):  # diverged: a failure, not a poor trial
            raise TrainingError(f"{self.key} is {value} at step {step}, not a finite number")
        self.trial.report(value, step)
        log({"objective/intermediate": value}, step)
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


def method_space(params: Params, opts: TuneOptions) -> tuple[dict[str, ParamSpec], list[str]]:
    """The task's search space split into the keys the tuned method runs with and those it does
    not (a DCDP task's space may hold keys of all three methods: each study searches its own)."""
    space = getattr(params.tune, opts.task)
    if opts.pipeline != "dcdp":
        return dict(space), []
    prefix, tweedie = f"restore.{opts.task}.", f"restore.{opts.task}.dcdp.tweedie."
    searched = frozenset(k.removeprefix(tweedie) for k in space if k.startswith(tweedie))  # set by every trial
    read = getattr(params.restore, opts.task).keys_read(opts.method, searched)

    def reads(key: str) -> bool:
        rest = key.removeprefix(prefix)
        return rest == key or any(rest == r or rest.startswith(r + ".") for r in read)
    return {k: v for k, v in space.items() if reads(k)}, [k for k in space if not reads(k)]


def _reporter(trial: optuna.Trial, opts: TuneOptions) -> tuple[str, Reporter]:
    """The stage whose curve the pruner watches, and the reporter."""
    if opts.pipeline == "dcdp":
        if opts.objective == "psnr":
            return "restore", Reporter(trial, f"psnr/{opts.method}/per_image", per_image=True)
        return "restore", Reporter(trial, f"residual/{opts.method}/per_image", per_image=True,
                                   transform=lambda r: abs(r - 1))
    key = "kernel/ncc" if opts.objective == "psnr" else "score/observation_gap"
    return "learn-operator", Reporter(trial, key, per_image=False)


def run_trial(trial: optuna.Trial, params: Params, root: Path, opts: TuneOptions,
              tracker, device: torch.device) -> dict[str, float]:
    """Run the task's stages with the trial's params; -> every metric, named stage/metric."""
    values = studies.suggest(trial, method_space(params, opts)[0])
    tracker.log_params(values)
    base = Path(params.paths.tune) / opts.study_name
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    p = trial_params(params, values, f"{base}/trial-{trial.number:04d}", f"{base}/checkpoints/{digest}")
    ws = Workspace(root, p.paths)
    watched, reporter = _reporter(trial, opts)
    metrics: dict[str, float] = {}

    def ctx_for(name: str, run_key: str) -> StageContext:
        report = reporter if name == watched else (lambda metrics, step, log: None)
        return StageContext(ws=ws, tracker=TrialTracker(tracker, name, report), device=device, run_key=run_key,
                            progress=False, register=False)

    if opts.pipeline == "ddm4ip":
        steps = [(n, STAGES[n], STAGES[n].run) for n in ("learn-operator", "invert", "evaluate")]
        keys = {"psnr": "evaluate/psnr/restored", "unsupervised": "learn-operator/score/observation_gap"}
    else:  # one method of restore-dcdp / restore-dps
        steps = [("restore", STAGES["restore-dcdp"], functools.partial(restore.run_methods, [opts.method]))]
        keys = {"psnr": f"restore/psnr/{opts.method}", "unsupervised": f"restore/discrepancy/{opts.method}"}
    for name, stage, run in steps:
        cfg = stage_config(stage, p, opts.task)
        run_key, _ = stage_key(stage, cfg, ws, opts.task)
        metrics |= {f"{name}/{k}": float(v) for k, v in run(cfg, ctx_for(name, run_key), opts.task).items()}
    scores = {k: metrics.get(v) for k, v in keys.items()}
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
