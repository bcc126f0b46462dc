"""Typed, frozen configuration: one dataclass per stage, loaded from ``params.yaml``.

Noise levels (``noise_sigma``) are standard deviations in the [-1, 1] image range that
every model in ddmops works in. Training lengths count images seen, not steps. The stage
configs live by concept in the submodules; this module assembles and loads them.
"""

from __future__ import annotations

import copy
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ddmops.config.data import (DeblurSpec, DegradeConfig, KernelSpec, ObservationsConfig, Paths, PrepareConfig,
                                PsfGridSpec, SrSpec, TrackingConfig)
from ddmops.config.ddm4ip import (DDM4IP_TASKS, DOMAINS, INVERT_METHODS, DiffPirConfig, EmaConfig, EvaluateConfig,
                                  InvertConfig, InvertTasks, KernelRegConfig, LearnOperatorConfig, LearnOperatorTasks,
                                  PnpConfig, PriorConfig, TrainPriorConfig, UNetConfig)
from ddmops.config.restore import TASKS, DcdpConfig, DpsConfig, RestoreConfig, TaskConfig, TaskOperatorConfig
from ddmops.config.selection import (TUNED_TASKS, GateConfig, ParamSpec, RegistryConfig, Space, TuneConfig,
                                     tuned_sections)
from ddmops.errors import ConfigError
from ddmops.strict import apply_overrides, from_dict, set_path, to_dict

__all__ = [
    "DDM4IP_TASKS", "DOMAINS", "INVERT_METHODS", "TASKS", "TUNED_TASKS", "DcdpConfig", "DeblurSpec", "DegradeConfig",
    "DiffPirConfig", "ObservationsConfig",
    "DpsConfig", "EmaConfig",
    "EvaluateConfig", "GateConfig", "InvertConfig", "InvertTasks", "KernelRegConfig", "KernelSpec",
    "LearnOperatorConfig", "LearnOperatorTasks", "ParamSpec", "Params", "Paths", "PnpConfig", "PrepareConfig",
    "PriorConfig",
    "PsfGridSpec", "RegistryConfig", "RestoreConfig", "Space", "SrSpec", "TaskConfig", "TaskOperatorConfig",
    "TrackingConfig", "TrainPriorConfig", "TuneConfig", "UNetConfig", "check_spaces", "expand_overrides",
    "load_params", "read_params_dict", "tuned_sections",
]


@dataclass(frozen=True)
class Params:
    paths: Paths = field(default_factory=Paths)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    train_prior: TrainPriorConfig = field(default_factory=TrainPriorConfig)
    learn_operator: LearnOperatorTasks = field(default_factory=LearnOperatorTasks)
    invert: InvertTasks = field(default_factory=InvertTasks)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


SECTION_TYPES = typing.get_type_hints(Params)  # section name -> its config class


def read_params_dict(path: Path, overrides: list[str] | None = None) -> dict:
    """The raw params mapping of ``path`` with ``key=value`` overrides applied."""
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return apply_overrides(data, expand_overrides(overrides or []))


def expand_overrides(overrides: list[str]) -> list[str]:
    """``@FILE`` (a YAML mapping of dotted keys, e.g. a tuned best-params file) -> KEY=VALUE items."""
    out = []
    for item in overrides:
        if not item.startswith("@"):
            out.append(item)
            continue
        path = Path(item[1:])
        try:
            mapping = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"override file {path}: {exc}") from None
        if not isinstance(mapping, dict):
            raise ConfigError(f"override file {path}: expected a mapping of dotted keys to values")
        out += [f"{k}={json.dumps(v)}" for k, v in mapping.items()]
    return out


def load_params(path: Path, overrides: list[str] | None = None) -> Params:
    """Load and validate a params file; errors name the file and the dotted key."""
    data = read_params_dict(path, overrides)
    try:
        params = from_dict(Params, data)
        check_spaces(params)
        return params
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_spaces(params: Params) -> None:
    """Every tuned key must be a value of its task's stages, and a trial setting it to either
    bound (or any choice) must give valid params."""
    base = to_dict(params)
    for task in TUNED_TASKS:
        for key, spec in getattr(params.tune, task).items():
            where = f"tune.{task}.{key}"
            if not any(key == s or key.startswith(s + ".") for s in tuned_sections(task)):
                raise ConfigError(f"'{where}': a {task} trial does not read {key!r}; "
                                  f"tune keys under {', '.join(tuned_sections(task))}")
            values = spec.choices if spec.type == "categorical" else (
                (int(spec.low), int(spec.high)) if spec.type == "int" else (spec.low, spec.high))
            *sections, leaf = key.split(".")
            node = base
            for part in sections:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or isinstance(node.get(leaf, {}), dict):  # missing, or a section
                raise ConfigError(f"'{where}': {key!r} is not a params value")
            section = sections[0]  # a value only reaches its own section: check that one
            for value in values:
                trial = copy.deepcopy(base[section])
                set_path(trial, key.split(".", 1)[1], value)
                try:
                    from_dict(SECTION_TYPES[section], trial, section)
                except ConfigError as exc:
                    raise ConfigError(f"'{where}': trial value {value!r} is invalid: {exc}") from None
