"""Experiment tracking: MLflow runs of stages, studies and trials (MLflow imported lazily).

Stages talk to a :class:`ddmops.tracker.Tracker`; the CLI hands them an :class:`MlflowTracker`,
tests and benchmarks a :class:`ddmops.tracker.NullTracker`. By default runs go to an embedded SQLite
store ``<workspace>/mlruns.db`` with artifacts under ``<workspace>/mlruns``;
``MLFLOW_TRACKING_URI`` (a server, another database) overrides it.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from ddmops.config import TrackingConfig
from ddmops.ops.environment import quiet_environment

TAG_STAGE, TAG_PIPELINE, TAG_RUN_KEY, TAG_ROLE = "ddmops.stage", "ddmops.pipeline", "ddmops.run_key", "ddmops.role"
TAG_STUDY = "ddmops.study"

SQLITE_TIMEOUT_S = 60  # how long a writer waits for another process's transaction


def embedded_uri(root: Path) -> str:
    return f"sqlite:///{(Path(root) / 'mlruns.db').resolve()}?timeout={SQLITE_TIMEOUT_S}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` store URI (query options dropped), else None."""
    return Path(uri[len("sqlite:///"):].split("?")[0]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def sqlite_setup(uri: str) -> Iterator[None]:
    """For an SQLite store: hold a lock file while the store is created or migrated (several
    processes may start at once: a `dvc repro`, tuning workers) and switch it to WAL, so
    readers never block the writer and writers wait for each other instead of failing."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    import fcntl
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            con = sqlite3.connect(db, timeout=SQLITE_TIMEOUT_S)
            try:
                con.execute("PRAGMA journal_mode=WAL")  # persistent: stays set in the file
            finally:
                con.close()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def default_tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI, else the embedded store in folder ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(root)


def store_root(workspace: Path, tracking: TrackingConfig) -> Path:
    """The folder of a workspace's embedded store (params: tracking.root)."""
    return (Path(workspace) / tracking.root).resolve()


class MlflowTracker:
    """Logs to the active MLflow run opened by :meth:`open`."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.last_step = 0

    @classmethod
    @contextlib.contextmanager
    def open(cls, *, root: Path, experiment: str, stage: str, run_key: str, pipeline: str,
             tags: Mapping[str, str] | None = None, datasets: Mapping[str, str] | None = None,
             system_metrics: bool = False, store: Path | None = None) -> Iterator["MlflowTracker"]:
        """Start (or resume) the run of ``stage`` under the pipeline's parent run (or under the
        run of `mlflow run`, when called from an MLproject entry point).

        A run that did not finish (killed, failed) with the same ``run_key`` - the
        stage, its config and its input data - is resumed instead of starting anew, so
        metrics continue where the checkpoint does. On an exception the run is marked
        FAILED with the error message as tag ``ddmops.error``. ``datasets`` (path -> DVC
        digest) become the run's MLflow dataset inputs; ``system_metrics`` samples CPU,
        memory (and GPU, with pynvml) while the run lasts. ``store``: the folder of the embedded
        store (default: the workspace ``root``).
        """
        quiet_environment()
        store = Path(store or root)
        uri = default_tracking_uri(store)
        if uri.startswith(("http://", "https://")):  # a team server: say so at once if it is down
            from ddmops.ops.server import require_server
            require_server(uri)
        import mlflow

        _set_tracking_uri(mlflow, uri)
        outer = os.environ.pop("MLFLOW_RUN_ID", None)  # set by `mlflow run`: it becomes the parent
        with sqlite_setup(uri):
            if outer:
                exp_id, parent = mlflow.get_run(outer).info.experiment_id, outer
            else:
                exp_id = _experiment_id(mlflow, experiment, store, embedded=uri == embedded_uri(store))
                parent = _pipeline_parent(mlflow, exp_id, pipeline)
        unfinished = mlflow.search_runs(
            [exp_id], filter_string=f"tags.`{TAG_RUN_KEY}` = '{run_key}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        all_tags = {TAG_STAGE: stage, TAG_PIPELINE: pipeline, TAG_RUN_KEY: run_key, **(tags or {})}
        if unfinished:
            run = mlflow.start_run(run_id=unfinished[0].info.run_id, log_system_metrics=system_metrics)
            mlflow.set_tags({**all_tags, "ddmops.resumed": "true"})
        else:
            run = mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent, tags=all_tags,
                                   log_system_metrics=system_metrics)
        with _ending(mlflow):
            if not unfinished:
                _log_datasets(mlflow, root, datasets or {})
            yield cls(run.info.run_id)

    @classmethod
    def study_parent(cls, *, root: Path, experiment: str, study: str, tags: Mapping[str, str]) -> str:
        """The run grouping the trials of Optuna study ``study`` ("<name>-<uid>": created on
        first use; every worker, on any machine, finds the same one by its tags)."""
        quiet_environment()
        uri = default_tracking_uri(root)
        import mlflow

        _set_tracking_uri(mlflow, uri)
        with sqlite_setup(uri):
            exp_id = _experiment_id(mlflow, experiment, root, embedded=uri == embedded_uri(root))
            return _grouping_run(mlflow, exp_id, "study", TAG_STUDY, study, f"tune-{study.rsplit('-', 1)[0]}", tags)

    @classmethod
    @contextlib.contextmanager
    def child(cls, parent: str, name: str, tags: Mapping[str, str],
              finished: tuple[type[BaseException], ...] = ()) -> Iterator["MlflowTracker"]:
        """A run nested under run ``parent`` (a tuning trial). It ends FINISHED, or FAILED with
        the error as tag ``ddmops.error`` - but FINISHED for exceptions of a ``finished`` type
        (a pruned trial ends normally)."""
        import mlflow

        exp_id = mlflow.get_run(parent).info.experiment_id
        run = mlflow.start_run(experiment_id=exp_id, run_name=name, parent_run_id=parent, tags=dict(tags))
        with _ending(mlflow, finished):
            yield cls(run.info.run_id)

    def log_params(self, params):
        import mlflow
        flat = {k: _param_str(v) for k, v in params.items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(items[i:i + 100]))

    def log_metrics(self, metrics, step=None):
        """Log finite values at ``step``; without one, at the latest step logged so far (so a
        final summary is what the run's 'latest value' shows)."""
        import mlflow
        self.last_step = max(self.last_step, step or 0)
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if finite:
            mlflow.log_metrics(finite, step=self.last_step if step is None else step)

    def log_image(self, image, artifact_file):
        import mlflow
        mlflow.log_image(image, artifact_file=artifact_file)

    def log_artifact(self, path, artifact_path=None):
        import mlflow
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags):
        import mlflow
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def curves(self) -> list[dict[str, float]]:
        """Every metric logged at more than one step, as rows ``{"step": s, name: value, ...}``
        sorted by step: the whole run, across resumes (read back from the store). System
        metrics (stepped by sample, not by images seen) are left to MLflow's own view."""
        import mlflow
        client = mlflow.MlflowClient()
        rows: dict[int, dict[str, float]] = {}
        for key in client.get_run(self.run_id).data.metrics:
            if key.startswith("system/"):
                continue
            history = client.get_metric_history(self.run_id, key)
            if len({m.step for m in history}) > 1:
                for m in sorted(history, key=lambda m: m.timestamp):  # a resumed step: the last value
                    rows.setdefault(m.step, {"step": m.step})[key] = m.value
        return [rows[s] for s in sorted(rows)]


@contextlib.contextmanager
def _ending(mlflow, finished: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """End the active run as its body ends: FINISHED, or KILLED (Ctrl-C) / FAILED with the error
    as tag ``ddmops.error``; exceptions of a ``finished`` type end it FINISHED."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, finished):
            mlflow.end_run(status="FINISHED")
        else:
            mlflow.set_tag("ddmops.error", f"{type(exc).__name__}: {exc}"[:4000])
            mlflow.end_run(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def _log_datasets(mlflow, root: Path, datasets: Mapping[str, str]) -> None:
    """Each input path as an MLflow dataset whose digest is its DVC hash."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    found = []
    for name, digest in datasets.items():
        if digest:  # '' : the path does not exist (an optional input)
            path = Path(name) if Path(name).is_absolute() else Path(root) / name
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local-file sources
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(str(path.resolve()))
            found.append(MetaDataset(source, name=name, digest=digest))
    if found:
        mlflow.log_inputs(datasets=found, contexts=["input"] * len(found), tags_list=[{}] * len(found))


def annotate_run(run_id: str, *, tags: Mapping[str, str] = {}, metrics: Mapping[str, float] = {},
                 artifacts: list[Path] = ()) -> None:
    """Add to a run that is not active here (a study's parent run): tags, finite metrics, files."""
    import mlflow
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    for k, v in metrics.items():
        if v is not None and math.isfinite(v):
            client.log_metric(run_id, k, float(v))
    for path in artifacts:
        client.log_artifact(run_id, str(path))


def use_tracking(uri: str) -> None:
    """Point this process's MLflow client (runs and model registry) at ``uri``, quietly."""
    quiet_environment()
    import mlflow
    _set_tracking_uri(mlflow, uri)


def _set_tracking_uri(mlflow, uri: str) -> None:
    """Point MLflow at ``uri`` without leaving it in the environment (``set_tracking_uri``
    exports MLFLOW_TRACKING_URI, which would send a later workspace of this process, or a
    child process, to this one's store)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _param_str(value: Any) -> str:
    text = str(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _experiment_id(mlflow, name: str, root: Path, embedded: bool) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # embedded store: artifacts beside it; a server or database: the store's own default
    location = (Path(root) / "mlruns").resolve().as_uri() if embedded else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _pipeline_parent(mlflow, exp_id: str, pipeline: str) -> str:
    """The run grouping every stage run of one params version (created on first use)."""
    return _grouping_run(mlflow, exp_id, "pipeline", TAG_PIPELINE, pipeline, f"pipeline-{pipeline}")


def _grouping_run(mlflow, exp_id: str, role: str, tag: str, value: str, name: str,
                  tags: Mapping[str, str] | None = None) -> str:
    """The (terminated) parent run of ``role`` whose tag ``tag`` is ``value``; made on first use."""
    found = mlflow.search_runs([exp_id], filter_string=f"tags.`{tag}` = '{value}' and tags.`{TAG_ROLE}` = '{role}'",
                               max_results=1, output_format="list")
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(exp_id, run_name=name, tags={tag: value, TAG_ROLE: role, **(tags or {})})
    client.set_terminated(run.info.run_id)
    return run.info.run_id

