"""Optuna studies for `ddmops tune`: storage, sampler, pruner, search spaces and results.

Optuna's RDB storage is the distributed engine: every worker process, on this machine or
another, opens the same study by name and draws its own trials. A worker killed mid-trial
stops its heartbeat; the next worker to look marks that trial failed and queues it again.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ddmops.config import ParamSpec
from ddmops.errors import ConfigError
from ddmops.ops.tracking import SQLITE_TIMEOUT_S, sqlite_setup

OBJECTIVES = {"psnr": "maximize", "unsupervised": "minimize"}
PRUNERS = ("median", "hyperband", "none")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, plots

RETRY_OF = "retry_of"  # user attr of a trial queued again after its worker was interrupted
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def default_storage(root: Path) -> str:
    """An SQLite file beside the embedded MLflow store."""
    return f"sqlite:///{(Path(root) / 'optuna.db').resolve()}"


def make_pruner(name: str, startup_trials: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: use one of {', '.join(PRUNERS)}")


def open_study(name: str, storage: str, direction: str, *, seed: int, pruner: optuna.pruners.BasePruner,
               heartbeat: int) -> optuna.Study:
    """Create or load study ``name``; a study made for the other direction is refused."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if storage.startswith("sqlite") else {}
    with sqlite_setup(storage):  # one process creates the tables; WAL for concurrent workers
        rdb = RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        study = optuna.create_study(study_name=name, storage=rdb, direction=direction, load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    if "uid" not in study.user_attrs:  # tells this study from an earlier one of the same name
        study.set_user_attr("uid", uuid.uuid4().hex[:12])
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} was made to {study.direction.name.lower()}; this objective needs "
                          f"{direction}: choose another --study-name")
    return study


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """One value per dotted params key."""
    out = {}
    for key, s in space.items():
        if s.type == "categorical":
            out[key] = trial.suggest_categorical(key, list(s.choices))
        elif s.type == "int":
            out[key] = trial.suggest_int(key, int(s.low), int(s.high), log=s.log, step=int(s.step or 1))
        else:
            out[key] = trial.suggest_float(key, s.low, s.high, log=s.log, step=s.step)
    return out


def retried(trial: FrozenTrial) -> int | None:
    """The number of the trial this one repeats (after a worker was killed or interrupted)."""
    number = trial.user_attrs.get(RETRY_OF)
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) if number is None else number


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count towards --n-trials: finished or running, an interrupted trial and its
    retry once."""
    live = [t for t in trials if t.state in FINISHED or t.state == TrialState.RUNNING]
    repeats = {r for t in trials if (r := retried(t)) is not None}
    return len(live) - len(repeats)


def best_trials(study: optuna.Study, n: int = 5) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return sorted(done, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")[:n]


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two equally long lists (nan with fewer than 3 pairs)."""
    if len(a) < 3:
        return float("nan")
    ra, rb = (np.argsort(np.argsort(np.asarray(v))).astype(float) for v in (a, b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def save_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's optimization history and (with enough complete trials) parameter importances."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = [("optimization_history.png", vis.plot_optimization_history)] if complete else []
    if len(complete) >= 2 and complete[0].params:
        plots.append(("param_importances.png", vis.plot_param_importances))
    for name, plot in plots:
        try:
            ax = plot(study)
        except (ValueError, RuntimeError):  # e.g. importances of parameters that never varied
            continue
        fig = (ax[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        out.append(folder / name)
    return out
