"""What a tuning study is asked to do (`ddmops tune` options), checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from ddmops.config import DDM4IP_TASKS, TUNED_TASKS
from ddmops.errors import ConfigError
from ddmops.ops import study as studies

METHODS = ("dcdp-ode", "dcdp-tweedie", "dps")


@dataclass(frozen=True)
class TuneOptions:
    task: str  # a params key: deblur, psf_grid, sr_kernel or a DCDP task
    n_trials: int = 20  # the study's size: a rerun with more continues it
    study: str = ""  # default: the task (DCDP tasks: task-method)
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
        return self.study or (self.task if self.pipeline == "ddm4ip" else f"{self.task}-{self.method}")

    @property
    def pipeline(self) -> str:
        """Which pipeline the task belongs to: 'ddm4ip' (operator learning) or 'dcdp' (restoration)."""
        return "ddm4ip" if self.task in DDM4IP_TASKS else "dcdp"


def tuned_by(opts: TuneOptions) -> str:
    """What runs a trial, for messages."""
    return f"--method {opts.method}" if opts.pipeline == "dcdp" else f"a {opts.task} trial"


def normalise_task(task: str) -> str:
    """CLI spelling (psf-grid) -> params key (psf_grid)."""
    return task.replace("-", "_")
