"""What a long computation may record, without knowing where it goes.

The imaging library (training loops, the operator learner) talks to a :class:`Tracker`;
the MLOps wing (:mod:`ddmops.ops.tracking`) hands it an MLflow-backed one, tests and
benchmarks a :class:`NullTracker`. This protocol is all the library knows of tracking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np


class Tracker(Protocol):
    """What a stage may record. Steps count images seen unless a stage says otherwise; a
    metric logged without a step lands on the latest step."""

    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_image(self, image: np.ndarray, artifact_file: str) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...


class NullTracker:
    """Records nothing; keeps the last metrics for callers that want them."""

    run_id = None

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_image(self, image, artifact_file):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def set_tags(self, tags):
        pass
