"""Typed, frozen configuration: one dataclass per stage, loaded from ``params.yaml``.

Noise levels (``noise_sigma``) are standard deviations in the [-1, 1] image range that
every model in ddmops works in. Training lengths count images seen, not steps.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from ddmops.errors import ConfigError
from ddmops.strict import apply_overrides, check_ranges, from_dict, set_path, to_dict

DDM4IP_TASKS: tuple[str, ...] = ("deblur", "psf_grid", "sr_kernel")  # operator families: blur, PSF grid, SR kernel
DOMAINS: tuple[str, ...] = ("clean", *DDM4IP_TASKS)  # priors: the clean one, and one per task's observations


@dataclass(frozen=True)
class Paths:
    """Where stages read and write, relative to the workspace (the folder of params.yaml)."""

    source: str = "data/source"  # folder of user images (see prepare.source)
    prepared: str = "data/prepared"
    degraded: str = "data/degraded"  # one folder per DDM4IP task
    priors: str = "models/priors"
    operator: str = "models/operator"
    restored: str = "outputs/restored"
    tasks: str = "outputs/tasks"  # DCDP / DPS restorations, one folder per task
    psfs: str = "data/psfs"  # measured PSF assets (`ddmops psf add`)
    metrics: str = "metrics"
    reports: str = "reports"
    checkpoints: str = ".checkpoints"
    tune: str = "tune"  # `ddmops tune`: per-study outputs (trials, best params, plots)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "ddmops"


@dataclass(frozen=True)
class KernelSpec:
    """A synthetic blur kernel: Gaussian (std along x/y, rotated), motion trajectory, or a file."""

    kind: Literal["gaussian", "motion", "file"] = "gaussian"
    size: int = 9
    std: tuple[float, float] = (1.5, 1.5)
    angle: float = 0.0  # degrees, Gaussian only
    intensity: float = 0.5  # motion only, in [0, 1]
    path: str = ""  # file only: .npy of (K, K) or (N, K, K)
    index: int = 0  # file only: which kernel of a stack
    seed: int = 0  # motion only

    def __post_init__(self):
        if self.size < 1 or self.size % 2 == 0:
            raise ValueError(f"kernel.size must be a positive odd integer, got {self.size}")
        if min(self.std) <= 0:
            raise ValueError(f"kernel.std must be positive, got {self.std}")
        if not 0.0 <= self.intensity <= 1.0:
            raise ValueError(f"kernel.intensity must lie in [0, 1], got {self.intensity}")
        if self.kind == "file" and not self.path:
            raise ValueError("kernel.kind 'file' needs kernel.path")


@dataclass(frozen=True)
class PrepareConfig:
    # 'auto': the images of paths.source if it holds any, else the photos packaged with scikit-image
    source: Literal["auto", "skimage", "folder"] = "auto"
    channels: Literal[1, 3] = 3
    max_side: int = 256  # photos with a longer side are downscaled (Lanczos)
    test_fraction: float = 0.2  # share of source images held out for testing
    # the other images go to the clean and degraded sets: whole images, or square tiles
    # assigned at random (disjoint pixels, so still unpaired, but with alike content)
    split: Literal["tiles", "images"] = "tiles"
    tile_size: int = 64
    clean_fraction: float = 0.5  # share of those images/tiles in the clean set
    test_crops: int = 4
    test_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if not (0 < self.test_fraction < 1 and 0 < self.clean_fraction < 1):
            raise ValueError("test_fraction and clean_fraction must lie in (0, 1)")
        if min(self.tile_size, self.test_size) < 16:
            raise ValueError("tile_size and test_size must be >= 16")


@dataclass(frozen=True)
class PsfGridSpec:
    """A synthetic lens PSF field (see ddmops.operators.kernels.lens_psf_grid), or a file."""

    grid: tuple[int, int] = (4, 4)
    size: int = 9
    sigma: float = 0.8
    astigmatism: float = 1.5
    coma: float = 0.3
    seed: int = 0
    path: str = ""  # a measured grid (.npy (Gy, Gx, K, K), e.g. from `ddmops psf add`) instead

    def __post_init__(self):
        if self.size < 1 or self.size % 2 == 0 or min(self.grid) < 1:
            raise ValueError(f"need an odd PSF size and a grid of at least 1x1, got {self.size}, {self.grid}")


@dataclass(frozen=True)
class SrSpec:
    """A DIV2KRK-style random SR kernel (KernelGAN's recipe) and the scale factor, or a file."""

    factor: int = 2
    size: int = 0  # 0: 6 * factor + 1
    noise: float = 0.0  # multiplicative noise on the kernel's entries
    seed: int = 0
    path: str = ""  # a kernel file (.npy (K, K)) instead

    def __post_init__(self):
        if self.factor < 1 or (self.size and self.size % 2 == 0):
            raise ValueError(f"need factor >= 1 and an odd size, got {self.factor}, {self.size}")


@dataclass(frozen=True)
class DegradeConfig:
    """The forward models the DDM4IP tasks must recover, applied to the degraded pieces."""

    noise_sigma: float = 0.02
    seed: int = 0  # the measurement noise
    deblur: KernelSpec = field(default_factory=KernelSpec)
    psf_grid: PsfGridSpec = field(default_factory=PsfGridSpec)
    sr_kernel: SrSpec = field(default_factory=SrSpec)

    def __post_init__(self):
        check_ranges(self, nonnegative=("noise_sigma",))


@dataclass(frozen=True)
class UNetConfig:
    """Velocity network; ``preset`` fixes the architecture, explicit fields override it."""

    preset: Literal["tiny", "xxxs", "xxs", "xs"] = "tiny"
    channels: int | None = None
    channel_mult: tuple[int, ...] | None = None
    num_blocks: int | None = None
    attn_resolutions: tuple[int, ...] | None = None
    dropout: float = 0.0
    position_channels: bool = False  # 2 extra inputs: normalised (x, y) in the full image
    num_labels: int = 0  # > 0 adds a learned domain/class embedding


@dataclass(frozen=True)
class EmaConfig:
    kind: Literal["classic", "power", "none"] = "power"
    decay: float = 0.999  # classic: weight of the old average per step
    std: float = 0.05  # power: relative std of the power-function profile (EDM2)


@dataclass(frozen=True)
class PriorConfig:
    """Training of one flow-matching prior (one data domain)."""

    model: UNetConfig = field(default_factory=UNetConfig)
    patch_size: int = 32
    batch_size: int = 32
    accumulation: int = 1
    images: int = 64_000  # training length, images seen
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    lr_decay: Literal["none", "cosine"] = "cosine"
    grad_clip: float = 1.0
    ema: EmaConfig = field(default_factory=EmaConfig)
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    flips: bool = True  # random flips; keep off for degraded data with an asymmetric kernel
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast on GPU only
    log_every: int = 2_048  # images
    sample_every: int = 16_384  # images
    checkpoint_every: int = 8_192  # images
    eval_patches: int = 64
    sample_steps: int = 32
    seed: int = 0

    def __post_init__(self):
        check_ranges(self, positive=("batch_size", "accumulation", "images", "lr", "log_every", "sample_every",
                                     "checkpoint_every", "eval_patches", "sample_steps"), nonnegative=("grad_clip",))
        if self.images < self.batch_size * self.accumulation:
            raise ValueError("images must cover at least one optimiser step (batch_size * accumulation)")
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be >= 8, got {self.patch_size}")


@dataclass(frozen=True)
class TrainPriorConfig:
    clean: PriorConfig = field(default_factory=PriorConfig)
    deblur: PriorConfig = field(default_factory=lambda: PriorConfig(flips=False))
    psf_grid: PriorConfig = field(default_factory=lambda: PriorConfig(
        flips=False, model=UNetConfig(position_channels=True)))
    sr_kernel: PriorConfig = field(default_factory=lambda: PriorConfig(flips=False))


@dataclass(frozen=True)
class KernelRegConfig:
    """Kernel regularisers of the distribution-matching learner (weights; 0 disables)."""

    sparse: float = 0.0  # mean(|k|^p)
    sparse_p: float = 0.5
    center: float = 0.01  # squared distance of the centre of mass from the kernel centre (px)
    gaussian: float = 0.0  # spread around the centre of mass
    sum_to_one: float = 0.0  # |sum(k_raw) - 1| before normalisation

    def __post_init__(self):
        check_ranges(self, positive=("sparse_p",), nonnegative=("sparse", "center", "gaussian", "sum_to_one"))


@dataclass(frozen=True)
class LearnOperatorConfig:
    """DDM4IP step 2 for one task; ``grid`` applies to psf_grid, ``factor`` and ``sr_*`` to
    sr_kernel (whose kernel size follows from ``sr_struct``)."""

    kernel_size: int = 9
    init: Literal["gaussian", "uniform", "random"] = "gaussian"
    param: Literal["abs", "softmax"] = "abs"  # kernel = |raw| / sum|raw| (DDM4IP) or softmax(raw)
    grid: tuple[int, int] = (4, 4)
    factor: int = 2  # the (known) scale of the SR task
    sr_struct: tuple[int, ...] = (7, 5, 3, 1, 1, 1)  # KernelGAN's layer sizes
    sr_channels: int = 64
    batch_size: int = 32
    images: int = 48_000  # images seen by the kernel update
    lr_kernel: float = 1e-3
    lr_aux: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    lr_decay: Literal["none", "cosine"] = "cosine"
    kernel_ema: float = 0.01  # rate of the kernel's moving average (0 disables)
    noise_sigma: float | None = None  # None: the level the data was made with (degrade)
    reg: KernelRegConfig = field(default_factory=KernelRegConfig)
    log_every: int = 1_024
    plot_every: int = 8_192
    checkpoint_every: int = 8_192
    seed: int = 0

    def __post_init__(self):
        check_ranges(self, positive=("factor", "sr_channels", "batch_size", "images", "lr_kernel", "lr_aux",
                                     "log_every", "plot_every", "checkpoint_every"),
                     nonnegative=("noise_sigma",), unit=("kernel_ema",))
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")


@dataclass(frozen=True)
class LearnOperatorTasks:
    deblur: LearnOperatorConfig = field(default_factory=LearnOperatorConfig)
    psf_grid: LearnOperatorConfig = field(default_factory=LearnOperatorConfig)
    sr_kernel: LearnOperatorConfig = field(default_factory=lambda: LearnOperatorConfig(
        reg=KernelRegConfig(center=0.1, sum_to_one=0.1)))


@dataclass(frozen=True)
class InvertConfig:
    """DiffPIR-style plug-and-play restoration with the clean flow prior (DDM4IP step 3)."""

    steps: int = 20
    lam: float = 7.0  # data-term weight rho_k = lam * sigma_n^2 / sigma_k^2 (sigmas in [-1, 1] units)
    zeta: float = 0.3  # share of fresh noise when re-noising
    cg_iters: int = 20
    noise_sigma: float | None = None  # None: the level the data was made with (degrade)
    operator: str = ""  # "" = this workspace's learned operator; else a file, folder, models:/ or runs:/ URI
    batch_size: int = 4
    seed: int = 0
    tile: int = 0  # > 0: the prior sees larger images as blended tiles of this side (bounded memory)

    def __post_init__(self):
        check_ranges(self, positive=("steps", "lam", "cg_iters", "batch_size"), nonnegative=("noise_sigma", "tile"),
                     unit=("zeta",))


@dataclass(frozen=True)
class InvertTasks:
    deblur: InvertConfig = field(default_factory=InvertConfig)
    psf_grid: InvertConfig = field(default_factory=InvertConfig)
    sr_kernel: InvertConfig = field(default_factory=InvertConfig)


@dataclass(frozen=True)
class TaskOperatorConfig:
    """The forward model of a restoration task (seeded where random)."""

    kind: Literal["blur", "sr", "inpaint", "phase", "camera", "learned"] = "blur"
    kernel: KernelSpec = field(default_factory=KernelSpec)  # blur, camera; sr with sr_kernel 'kernel'
    factor: int = 4  # sr
    sr_kernel: Literal["bicubic", "kernel"] = "bicubic"
    mask: Literal["box", "random"] = "box"  # inpaint
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
    init: Literal["zeros", "adjoint"] = "zeros"
    checkpoint_every: int = 10  # outer iterations between checkpoints of a restoration (0: per batch only)

    def __post_init__(self):
        check_ranges(self, positive=("iterations", "inner_steps", "lr", "ode_steps"),
                     nonnegative=("prox_weight", "checkpoint_every"), unit=("momentum",))
        if not (0 <= self.t_end <= self.t_start <= 1000 and self.t_start >= 1):
            raise ValueError(f"need 0 <= t_end <= t_start <= 1000, got {self.t_end}, {self.t_start}")
        if self.iterations > self.t_start:
            raise ValueError(f"iterations ({self.iterations}) cannot exceed t_start ({self.t_start})")


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


TASKS: tuple[str, ...] = ("gaussian_deblur", "motion_deblur", "nonlinear_deblur", "inpainting", "superres",
                          "phase_retrieval")


@dataclass(frozen=True)
class RestoreConfig:
    """DCDP and DPS restoration of the held-out test images, one section per task."""

    images: int = 4  # how many test images
    batch_size: int = 4
    seed: int = 0
    tile: int = 0  # > 0: the prior sees larger images as blended tiles of this side (bounded memory)
    gaussian_deblur: TaskConfig = field(default_factory=TaskConfig)
    motion_deblur: TaskConfig = field(default_factory=TaskConfig)
    nonlinear_deblur: TaskConfig = field(default_factory=TaskConfig)
    inpainting: TaskConfig = field(default_factory=TaskConfig)
    superres: TaskConfig = field(default_factory=TaskConfig)
    phase_retrieval: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self):
        check_ranges(self, positive=("images", "batch_size"), nonnegative=("tile",))


@dataclass(frozen=True)
class EvaluateConfig:
    grid_images: int = 4  # test images shown in the restoration grid


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
            for value in values:
                trial = copy.deepcopy(base)
                set_path(trial, key, value)
                try:
                    from_dict(Params, trial)
                except ConfigError as exc:
                    raise ConfigError(f"'{where}': trial value {value!r} is invalid: {exc}") from None
