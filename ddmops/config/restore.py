"""Configs of the DCDP / DPS restoration tasks: forward model, measurement noise and both
methods' settings per task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ddmops.config.data import KernelSpec
from ddmops.strict import check_ranges


@dataclass(frozen=True)
class TaskOperatorConfig:
    """The forward model of a restoration task (seeded where random)."""

    kind: Literal["blur", "sr", "inpaint", "phase", "camera", "learned"] = "blur"
    kernel: KernelSpec = field(default_factory=KernelSpec)  # blur, camera; sr with sr_kernel 'kernel'
    factor: int = 4  # sr
    sr_kernel: Literal["bicubic", "kernel"] = "bicubic"
    mask: Literal["box", "random"] = "random"  # inpaint (random: DCDP's)
    box: tuple[int, int] = (24, 24)
    missing: tuple[float, float] = (0.3, 0.7)  # random mask: P(missing) ~ U(low, high) per image
    oversampling: float = 2.0  # phase
    gain: float = 1.3  # camera: exposure gain before the sensor saturates
    gamma: float = 2.2
    source: str = ""  # learned: a .npy kernel file or an MLflow model URI

    def __post_init__(self):
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not 0 <= self.missing[0] <= self.missing[1] <= 1:
            raise ValueError(f"missing must satisfy 0 <= low <= high <= 1, got {self.missing}")
        if self.kind == "learned" and not self.source:
            raise ValueError("operator kind 'learned' needs operator.source")


@dataclass(frozen=True)
class TweedieSettings:
    """DCDP settings of purify 'tweedie' where they differ from the ODE's (None: the same). Its
    one-step mean is blurred from levels at which the ODE still restores detail, so it may want
    a lower T_0/T_end."""

    iterations: int | None = None
    inner_steps: int | None = None
    lr: float | None = None
    t_start: int | None = None
    t_end: int | None = None

    def given(self) -> dict[str, int | float]:
        """The settings that differ from the ODE's."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


ODE_ONLY = ("ode_steps", "guidance")  # DCDP settings purify 'tweedie' does not read


@dataclass(frozen=True)
class DcdpConfig:
    iterations: int = 10  # K
    inner_steps: int = 100  # N gradient steps per data-consistency phase
    lr: float = 1.0  # on sum_images 0.5 ||y - A(x)||^2
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    prox_weight: float = 0.0
    t_start: int = 400  # T_0 on the 1000-step DDPM scale
    t_end: int = 0
    schedule: Literal["linear", "cosine"] = "linear"
    ode_steps: int = 20  # M, for purify 'ode'
    guidance: float = 0.0  # purify 'ode': DPS step size per ODE step (0: unguided, as the paper)
    init: Literal["zeros", "adjoint"] = "zeros"
    tweedie: TweedieSettings = field(default_factory=TweedieSettings)
    checkpoint_every: int = 10  # outer iterations between checkpoints of a restoration (0: per batch only)

    def __post_init__(self):
        check_ranges(self, positive=("iterations", "inner_steps", "lr", "ode_steps"),
                     nonnegative=("prox_weight", "checkpoint_every", "guidance"), unit=("momentum",))
        if not (0 <= self.t_end <= self.t_start <= 1000 and self.t_start >= 1):
            raise ValueError(f"need 0 <= t_end <= t_start <= 1000, got {self.t_end}, {self.t_start}")
        if self.iterations > self.t_start:
            raise ValueError(f"iterations ({self.iterations}) cannot exceed t_start ({self.t_start})")
        if self.tweedie.given():
            try:
                self.for_mode("tweedie")
            except ValueError as exc:
                raise ValueError(f"tweedie: {exc}") from None

    def for_mode(self, mode: str) -> DcdpConfig:
        """The settings purification mode 'ode' or 'tweedie' runs with."""
        if mode != "tweedie":
            return self
        return dataclasses.replace(self, **self.tweedie.given(), tweedie=TweedieSettings())

    def keys_read(self, mode: str, tweedie_set: frozenset[str] = frozenset()) -> list[str]:
        """The keys (dotted, under ``dcdp``) that purification mode 'ode' or 'tweedie' runs with,
        ``tweedie_set`` naming ``tweedie.*`` keys that will be set (by a tuning trial)."""
        own = [f.name for f in dataclasses.fields(self) if f.name != "tweedie"]
        if mode != "tweedie":
            return own
        overridden = tweedie_set | self.tweedie.given().keys()
        return ([k for k in own if k not in ODE_ONLY and k not in overridden]
                + [f"tweedie.{f.name}" for f in dataclasses.fields(TweedieSettings)])


@dataclass(frozen=True)
class DpsConfig:
    steps: int = 100
    zeta: float = 1.0

    def __post_init__(self):
        check_ranges(self, positive=("steps",), nonnegative=("zeta",))


@dataclass(frozen=True)
class TaskConfig:
    operator: TaskOperatorConfig = field(default_factory=TaskOperatorConfig)
    noise_sigma: float = 0.05
    dcdp: DcdpConfig = field(default_factory=DcdpConfig)
    dps: DpsConfig = field(default_factory=DpsConfig)

    def __post_init__(self):
        check_ranges(self, nonnegative=("noise_sigma",))

    def keys_read(self, method: str, tweedie_set: frozenset[str] = frozenset()) -> list[str]:
        """The keys (dotted, under the task) that restoration ``method`` (dcdp-ode, dcdp-tweedie or
        dps) runs with; ``tweedie_set`` as for :meth:`DcdpConfig.keys_read`."""
        common = ["operator", "noise_sigma"]
        if method == "dps":
            return [*common, "dps"]
        return [*common, *(f"dcdp.{k}" for k in self.dcdp.keys_read(method.removeprefix("dcdp-"), tweedie_set))]


TASKS: tuple[str, ...] = ("gaussian_deblur", "motion_deblur", "nonlinear_deblur", "inpainting", "superres",
                          "phase_retrieval")


@dataclass(frozen=True)
class RestoreConfig:
    """DCDP and DPS restoration of the held-out test images, one section per task."""

    images: int = 4  # how many test images
    batch_size: int = 4
    seed: int = 0
    tile: int = 0  # > 0: the prior sees larger images as blended tiles of this side (bounded memory)
    precision: Literal["fp32", "bf16"] = "fp32"  # the prior's autocast on GPU
    compile: bool = False  # torch.compile the prior (eager where unavailable)
    gaussian_deblur: TaskConfig = field(default_factory=TaskConfig)
    motion_deblur: TaskConfig = field(default_factory=TaskConfig)
    nonlinear_deblur: TaskConfig = field(default_factory=TaskConfig)
    inpainting: TaskConfig = field(default_factory=TaskConfig)
    superres: TaskConfig = field(default_factory=TaskConfig)
    phase_retrieval: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self):
        check_ranges(self, positive=("images", "batch_size"), nonnegative=("tile",))
