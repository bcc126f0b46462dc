"""Choosing among runs: registry promotion gates and the search spaces of `ddmops tune`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ddmops.config.ddm4ip import DDM4IP_TASKS
from ddmops.config.restore import TASKS
from ddmops.strict import check_ranges


@dataclass(frozen=True)
class GateConfig:
    """When `ddmops registry promote` moves alias `champion` to a task's candidate."""

    metric: str = "kernel/ncc"  # a metric recorded with every version (needs the true kernel)
    mode: Literal["max", "min"] = "max"  # max: higher is better (kernel/ncc); min: lower (loss/dm)
    min_delta: float = 0.0  # the candidate must beat the champion by more than this

    def __post_init__(self):
        if not self.metric:
            raise ValueError("metric must name a metric, e.g. kernel/ncc or loss/dm")
        check_ranges(self, nonnegative=("min_delta",))


@dataclass(frozen=True)
class RegistryConfig:
    """Promotion gates per DDM4IP task; read by `ddmops registry`, by no pipeline stage."""

    deblur: GateConfig = field(default_factory=GateConfig)
    psf_grid: GateConfig = field(default_factory=GateConfig)
    sr_kernel: GateConfig = field(default_factory=GateConfig)


Scalar = bool | int | float | str


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of a search space: ``float``/``int`` over [low, high] (log scale or a
    step optional) or ``categorical`` over ``choices``."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Scalar, ...] = ()

    def __post_init__(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("categorical takes 'choices', not low/high")
            return
        if self.choices:
            raise ValueError(f"{self.type} takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' do not go together")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int range needs whole bounds (got {self.low}, {self.high})")


Space = dict[str, ParamSpec]  # dotted params key -> its range


@dataclass(frozen=True)
class TuneConfig:
    """Search spaces of `ddmops tune --task T`: dotted params keys of the task's stages."""

    deblur: Space = field(default_factory=dict)
    psf_grid: Space = field(default_factory=dict)
    sr_kernel: Space = field(default_factory=dict)
    gaussian_deblur: Space = field(default_factory=dict)
    motion_deblur: Space = field(default_factory=dict)
    nonlinear_deblur: Space = field(default_factory=dict)
    inpainting: Space = field(default_factory=dict)
    superres: Space = field(default_factory=dict)
    phase_retrieval: Space = field(default_factory=dict)


TUNED_TASKS: tuple[str, ...] = (*DDM4IP_TASKS, *TASKS)


def tuned_sections(task: str) -> tuple[str, ...]:
    """The params sections a trial of ``task`` runs with: what its search space may name."""
    if task in DDM4IP_TASKS:
        return (f"learn_operator.{task}", f"invert.{task}")
    return (f"restore.{task}", "restore.tile")
