"""Learned operators in the MLflow model registry: log, register, promote, list, fetch.

One registered model per task (:data:`MODEL_NAMES`). Every new version gets alias
``candidate``; :func:`promote` moves ``champion`` to it when the gate metric says it is
better (or when forced, with a reason kept as a version tag). Aliases and tags only, no stages.

The logged model is an MLflow pyfunc "from code": its artifacts are an operator folder
(``operator.npz`` of plain arrays, as learn-operator writes it, see
:mod:`ddmops.operators.psf_operator`, and ``operator.json``) and a three-line script naming
:class:`OperatorModel`; nothing is pickled, and loading needs only ``ddmops``.
Import this module lazily: it imports MLflow.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import mlflow
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from ddmops.config import GateConfig, RegistryConfig
from ddmops.errors import DdmopsError
from ddmops.io import write_json
from ddmops.operators.psf_operator import OPERATOR_FILE, PsfOperator
from ddmops.ops.serving import INFO_FILE, ServedOperator, handle, redact

MODEL_NAMES = {"deblur": "ddmops-psf-deblur", "psf_grid": "ddmops-psf-grid", "sr_kernel": "ddmops-sr-kernel"}
CANDIDATE, CHAMPION = "candidate", "champion"
TAG_DATA, TAG_DATA_HASH, TAG_METRIC = "ddmops.data.", "ddmops.data_hash", "ddmops.metric."
MODEL_FOLDER = Path("artifacts") / "operator"  # the operator folder inside a registered model
ARTIFACT_KEY = MODEL_FOLDER.name
INPUT_EXAMPLE = [{"kind": "psf_at", "x": 0.5, "y": 0.5}]
MODEL_CODE = """from mlflow.models import set_model

from ddmops.ops.registry import OperatorModel

set_model(OperatorModel())
"""


# one request and one answer of ddmops.ops.serving (unions: MLflow checks no values, ddmops.ops.serving does)
Request, Answer = dict[str, str | int | float | list], dict[str, str | int | float | list | dict]


@contextlib.contextmanager
def _quiet_type_hints() -> Iterator[None]:
    """MLflow logs that a union type hint is not validated; ddmops.ops.serving validates requests."""
    log = logging.getLogger("mlflow.types.type_hints")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


with _quiet_type_hints():
    class OperatorModel(mlflow.pyfunc.PythonModel):
        """Answers the requests of :mod:`ddmops.ops.serving`; a bad request is an HTTP 400 naming the problem."""

        def load_context(self, context) -> None:
            self.operator = ServedOperator.load(Path(context.artifacts[ARTIFACT_KEY]))

        def predict(self, model_input: list[Request], params: dict[str, Any] | None = None) -> list[Answer]:
            try:
                return handle(self.operator, model_input)
            except (DdmopsError, ValueError) as exc:
                if _MLFLOW_IS_IN_SERVING_ENVIRONMENT.get():  # the scoring server echoes the input with the error
                    redact(model_input)  # (in place: never done to an in-process caller's lists)
                raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


def model_name(task: str, device: str = "") -> str:
    """The registered model of a task (the synthetic pipeline's), or of a calibrated device."""
    if task not in MODEL_NAMES:
        raise DdmopsError(f"unknown task {task!r}; tasks: {', '.join(MODEL_NAMES)}")
    if device:
        return f"ddmops-{'sr' if task == 'sr_kernel' else 'psf'}-{device}"
    return MODEL_NAMES[task]


def gate_of(cfg: RegistryConfig, task: str) -> GateConfig:
    """The promotion gate of ``task`` (params: registry.<task>)."""
    model_name(task)  # an unknown task fails here, naming the known ones
    return getattr(cfg, task)


def log_operator(operator: PsfOperator, *, task: str, info: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None,
                 training_data: str | None = None, device: str = "") -> ModelVersion:
    """Log ``operator`` as a pyfunc model in the active run (a new run if none) and register it
    as a new version of ``task``'s model (or of ``device``'s, see :func:`model_name`), with alias
    ``candidate``.

    ``metrics`` and the run's input digests (tags ``ddmops.data.<path>``) become version tags;
    ``training_data`` names the input whose digest is the version's data hash.
    """
    name = model_name(task, device)
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    active = mlflow.active_run()
    with contextlib.nullcontext(active) if active else mlflow.start_run() as run:
        run_tags = mlflow.get_run(run.info.run_id).data.tags
        data = {k[len(TAG_DATA):]: v for k, v in run_tags.items() if k.startswith(TAG_DATA)}
        data_hash = data.get(training_data or "", "")
        info = {**(info or {}), "task": task, "device": device, "family": operator.family, "params": dict(params or {}),
                "metrics": metrics, "data": data, "data_hash": data_hash, "source_run": run.info.run_id}
        served = ServedOperator(operator, info)
        info |= served.describe()
        with tempfile.TemporaryDirectory() as tmp, _quiet_type_hints():
            folder = Path(tmp) / ARTIFACT_KEY
            operator.save(folder / OPERATOR_FILE)
            write_json(folder / INFO_FILE, info)
            (Path(tmp) / "operator_model.py").write_text(MODEL_CODE)
            logged = mlflow.pyfunc.log_model(
                name="operator", python_model=str(Path(tmp) / "operator_model.py"),
                artifacts={ARTIFACT_KEY: str(folder)}, input_example=INPUT_EXAMPLE, registered_model_name=name,
                pip_requirements=_requirements(), metadata={**served.describe(), "data_hash": data_hash},
                params={k: str(v) for k, v in (params or {}).items()})
    client = mlflow.MlflowClient()
    version = str(logged.registered_model_version)
    d = served.describe()
    tags = {"ddmops.task": task, "ddmops.family": d["family"], "ddmops.kernel_size": d["kernel_size"],
            "ddmops.grid_shape": "x".join(map(str, d["grid_shape"])), "ddmops.factor": d["factor"],
            TAG_DATA_HASH: data_hash, **{TAG_DATA + k: v for k, v in data.items()},
            **{TAG_METRIC + k: repr(v) for k, v in metrics.items()}}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, CANDIDATE, version)
    return client.get_model_version(name, version)


def _requirements() -> list[str]:
    # ddmops itself must be installed where the model loads (it is not on a package index)
    return [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"torch=={torch.__version__.split('+')[0]}"]


def model_version(uri: str) -> ModelVersion:
    """The version a ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` URI names."""
    body = uri[len("models:/"):] if uri.startswith("models:/") else ""
    name, sep, alias = body.partition("@")
    if not sep:
        name, _, alias = body.rpartition("/")
    if not name or not alias:
        raise DdmopsError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias) if sep else client.get_model_version(name, alias)
    except MlflowException as exc:
        raise DdmopsError(f"{uri}: no such model version in {mlflow.get_tracking_uri()} "
                          f"({_first_line(exc.message)})") from None


def fetch_operator(uri: str) -> tuple[PsfOperator, dict[str, str]]:
    """Download the operator of a ``models:/`` or ``runs:/`` URI; also the provenance tags
    (``ddmops.operator`` and, for a registry model, its name, version and source run)."""
    tags = {"ddmops.operator": uri}
    source = uri
    if uri.startswith("models:/"):
        mv = model_version(uri)
        source = f"models:/{mv.name}/{mv.version}"
        tags |= {"ddmops.operator.model": mv.name, "ddmops.operator.version": str(mv.version),
                 "ddmops.operator.run_id": mv.run_id or ""}
    elif uri.startswith("runs:/"):
        tags["ddmops.operator.run_id"] = uri[len("runs:/"):].split("/")[0]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise DdmopsError(f"{uri}: cannot download ({_first_line(str(exc))})") from None
        try:
            return PsfOperator.load(model_operator_folder(Path(local))), tags
        except DdmopsError as exc:
            raise DdmopsError(f"{uri}: {str(exc).replace(local, '<artifact>')}") from None


def model_operator_folder(folder: Path) -> Path:
    """The operator folder of a downloaded model folder (one holding ``MLmodel``); else ``folder``."""
    return folder / MODEL_FOLDER if (folder / "MLmodel").is_file() else folder


@dataclass(frozen=True)
class Decision:
    outcome: Literal["promoted", "refused", "unchanged"]  # unchanged: it already is the champion
    model: str
    version: str
    previous: str | None  # the champion before
    message: str


def promote(task: str, gate: GateConfig, *, version: str | None = None, force: bool = False,
            reason: str = "", device: str = "") -> Decision:
    """Move alias ``champion`` to ``version`` (default: the ``candidate``) if its gate metric
    beats the champion's by more than ``gate.min_delta``, or unconditionally with ``force``.
    The decision is kept as version tags (``ddmops.gate``, ``ddmops.promoted_at``,
    ``ddmops.previous_champion``, ``ddmops.force_reason``)."""
    if force and not reason.strip():
        raise DdmopsError("--force needs --reason \"why\" (kept as a tag of the version)")
    name = model_name(task, device)
    cand = model_version(f"models:/{name}/{version}" if version else f"models:/{name}@{CANDIDATE}")
    champ = _by_alias(name, CHAMPION)
    client = mlflow.MlflowClient()
    cand_v, champ_v = str(cand.version), (str(champ.version) if champ else None)
    if cand_v == champ_v:
        return Decision("unchanged", name, cand_v, champ_v, f"version {cand_v} is already the champion")
    if force:
        message = f"forced: {reason.strip()}"
        client.set_model_version_tag(name, cand_v, "ddmops.force_reason", reason.strip())
    elif champ is None:
        message = f"first champion ({gate.metric} = {_metric(cand, gate.metric):.6g})"
    else:
        value, best = _metric(cand, gate.metric), _metric(champ, gate.metric)
        gain = value - best if gate.mode == "max" else best - value
        verdict = "beats" if gain > gate.min_delta else "does not beat"
        message = (f"{gate.metric} {value:.6g} {verdict} champion v{champ_v}'s {best:.6g} by more than "
                   f"{gate.min_delta:g} ({gate.mode} is better)")
        if gain <= gate.min_delta:
            client.set_model_version_tag(name, cand_v, "ddmops.gate", f"refused: {message}")
            return Decision("refused", name, cand_v, champ_v, message)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = {"ddmops.gate": f"promoted: {message}", "ddmops.promoted_at": now}
    for key, text in (record | ({"ddmops.previous_champion": champ_v} if champ_v else {})).items():
        client.set_model_version_tag(name, cand_v, key, text)
    client.set_registered_model_alias(name, CHAMPION, cand_v)
    return Decision("promoted", name, cand_v, champ_v, message)


def versions(task: str, device: str = "") -> list[tuple[ModelVersion, list[str]]]:
    """All versions of a task's (or device's) model with their aliases, newest first ([] when none
    is registered). (Search results carry no aliases: they come from the registered model.)"""
    client, name = mlflow.MlflowClient(), model_name(task, device)
    found = client.search_model_versions(f"name = '{name}'")
    if not found:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    return [(mv, sorted(aliases.get(str(mv.version), [])))
            for mv in sorted(found, key=lambda mv: int(mv.version), reverse=True)]


def metric_of(mv: ModelVersion, metric: str) -> float | None:
    text = mv.tags.get(TAG_METRIC + metric)
    return None if text is None else float(text)


def _metric(mv: ModelVersion, metric: str) -> float:
    value = metric_of(mv, metric)
    if value is None:
        have = sorted(k[len(TAG_METRIC):] for k in mv.tags if k.startswith(TAG_METRIC))
        raise DdmopsError(f"version {mv.version} of {mv.name} has no metric {metric!r} (it has: "
                          f"{', '.join(have) or 'none'}); set registry.{mv.tags.get('ddmops.task', '<task>')}"
                          ".metric in params.yaml")
    return value


def _by_alias(name: str, alias: str) -> ModelVersion | None:
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
