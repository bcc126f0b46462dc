"""The workspace: the folder holding params.yaml, against which relative paths resolve, and
the names of the files stages hand each other (one place: stages never import each other).

Under ``paths.prepared``: ``clean.npz`` (the clean set), ``to_degrade.npz`` (the pieces each
DDM4IP task observes), ``test_clean.npz`` (held-out test crops), ``meta.json``. Under
``paths.degraded/<task>``: ``degraded.npz`` (the observations), ``test_degraded.npz`` (the test
crops observed), ``truth.npz`` (the synthetic operator, when there is one), ``meta.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from ddmops.config import Paths
from ddmops.errors import ConfigError
from ddmops.operators.psf_operator import OPERATOR_FILE

PREPARED = {"clean": "clean.npz", "to_degrade": "to_degrade.npz", "test": "test_clean.npz", "meta": "meta.json"}
OBSERVED = {"train": "degraded.npz", "test": "test_degraded.npz", "truth": "truth.npz", "meta": "meta.json"}
PRIOR_FILE = "prior.safetensors"


@dataclass(frozen=True)
class Workspace:
    root: Path
    paths: Paths

    def __post_init__(self):
        for f in fields(self.paths):
            value = getattr(self.paths, f.name)
            if value and not Path(value).is_absolute():
                resolved = (self.root / value).resolve()
                if not resolved.is_relative_to(self.root.resolve()):
                    raise ConfigError(
                        f"paths.{f.name}: {value!r} leaves the workspace {self.root}; "
                        "give an absolute path to write outside it"
                    )

    def path(self, name: str, *parts: str) -> Path:
        """Absolute path of ``paths.<name>`` (joined with ``parts``)."""
        value = getattr(self.paths, name)
        base = Path(value) if Path(value).is_absolute() else self.root / value
        return base.joinpath(*parts)

    def key(self, path: Path) -> str:
        """How run tags and digests name ``path``: relative to the root when inside it."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def metrics_file(self, stage: str) -> Path:
        return self.path("metrics", f"{stage}.json")

    # --- the files stages hand each other

    def prepared(self, which: Literal["clean", "to_degrade", "test", "meta"]) -> Path:
        return self.path("prepared", PREPARED[which])

    def observed(self, task: str, which: Literal["train", "test", "truth", "meta"]) -> Path:
        """A DDM4IP task's observations (train, test), its true operator and its metadata."""
        return self.path("degraded", task, OBSERVED[which])

    def prior(self, domain: str) -> Path:
        """The flow prior of ``domain`` ('clean', or a task's observations)."""
        return self.path("priors", domain, PRIOR_FILE)

    def operator(self, task: str) -> Path:
        """The operator ``learn-operator`` learned for ``task``."""
        return self.path("operator", task, OPERATOR_FILE)

    def restored(self, task: str, name: str) -> Path:
        """A DDM4IP task's test restorations with operator ``name`` (learned, oracle)."""
        return self.path("restored", task, f"{name}.npz")

    def restored_source(self, task: str) -> Path:
        """Which operator a DDM4IP task's restorations used (its provenance tags, JSON)."""
        return self.path("restored", task, "operator_source.json")

    def task_output(self, task: str, method: str) -> Path:
        """A restoration task's test restorations by ``method`` (dcdp-ode, dcdp-tweedie, dps)."""
        return self.path("tasks", task, f"{method}.npz")

    def checkpoint(self, name: str) -> Path:
        """Resumable state of a stage run or part of one (not tracked by DVC)."""
        return self.path("checkpoints", f"{name}.pt")
