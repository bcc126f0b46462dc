"""Configs of DDM4IP's stages: flow priors (step 1), operator learning (step 2), inversion
with the learned operator (step 3) and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ddmops.config.restore import DcdpConfig, DpsConfig
from ddmops.strict import check_ranges


DDM4IP_TASKS: tuple[str, ...] = ("deblur", "psf_grid", "sr_kernel")  # operator families: blur, PSF grid, SR kernel
DOMAINS: tuple[str, ...] = ("clean", *DDM4IP_TASKS)  # priors: the clean one, and one per task's observations


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
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast on GPU only (bf16: tensor cores, no scaler)
    compile: bool = False  # torch.compile the training step's network (falls back to eager where unavailable)
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
    spectral: float = 0.0  # log-spectrum misfit to the unpaired sets' second-order statistics (ddm4ip/spectral.py)

    def __post_init__(self):
        check_ranges(self, positive=("sparse_p",),
                     nonnegative=("sparse", "center", "gaussian", "sum_to_one", "spectral"))


@dataclass(frozen=True)
class LearnOperatorConfig:
    """DDM4IP step 2 for one task; ``grid`` applies to psf_grid, ``factor`` and ``sr_*`` to
    sr_kernel (whose kernel size follows from ``sr_struct``)."""

    kernel_size: int = 9
    # spectral: anisotropic Gaussians fitted to the clean and observed power spectra (second-order
    # distribution matching); blind: blind deconvolution of the observed set, coarse to fine; auto:
    # the one of these two that fits the spectra better (blind and auto: uniform blur only, deblur);
    # gaussian: a broad centred one; uniform; random
    init: Literal["spectral", "blind", "auto", "gaussian", "uniform", "random"] = "gaussian"
    param: Literal["abs", "softmax"] = "abs"  # kernel = |raw| / sum|raw| (DDM4IP) or softmax(raw)
    grid: tuple[int, int] = (4, 4)
    factor: int = 2  # the (known) scale of the SR task
    sr_struct: tuple[int, ...] = (7, 5, 3, 1, 1, 1)  # KernelGAN's layer sizes
    sr_channels: int = 64
    batch_size: int = 32
    images: int = 48_000  # images seen by the kernel update; 0: no pass, the start is the operator
    lr_kernel: float = 1e-3
    lr_aux: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    lr_decay: Literal["none", "cosine"] = "cosine"
    kernel_ema: float = 0.01  # rate of the kernel's moving average (0 disables)
    noise_sigma: float | None = None  # None: the level the data was made with (degrade)
    reg: KernelRegConfig = field(default_factory=KernelRegConfig)
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast of the networks on GPU only
    compile: bool = False  # torch.compile both networks (falls back to eager where unavailable)
    device: str = ""  # a calibrated device (`ddmops calibrate`): registers as its model, ddmops-psf-<device>
    log_every: int = 1_024
    plot_every: int = 8_192
    checkpoint_every: int = 8_192
    seed: int = 0

    def __post_init__(self):
        check_ranges(self, positive=("factor", "sr_channels", "batch_size", "lr_kernel", "lr_aux",
                                     "log_every", "plot_every", "checkpoint_every"),
                     nonnegative=("images", "noise_sigma"), unit=("kernel_ema",))
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")


@dataclass(frozen=True)
class LearnOperatorTasks:
    deblur: LearnOperatorConfig = field(default_factory=LearnOperatorConfig)
    psf_grid: LearnOperatorConfig = field(default_factory=LearnOperatorConfig)
    sr_kernel: LearnOperatorConfig = field(default_factory=lambda: LearnOperatorConfig(
        reg=KernelRegConfig(center=0.1, sum_to_one=0.1)))

    def __post_init__(self):
        for task in ("psf_grid", "sr_kernel"):
            init = getattr(self, task).init
            if init in ("blind", "auto"):
                raise ValueError(f"learn_operator.{task}.init: {init!r} needs the blind start, "
                                 "which estimates one uniform blur (deblur only); use 'spectral'")


@dataclass(frozen=True)
class PnpConfig:
    """Plug-and-play half-quadratic splitting (DPIR's schedule) with the clean prior as denoiser."""

    iterations: int = 8  # denoiser calls, at levels geometric from sigma_start to the noise level
    lam: float = 0.23  # data-step weight rho_k = lam sigma^2 / sigma_k^2 (DPIR's)
    sigma_start: float = 0.384  # first denoising level ([-1, 1] units: DPIR's 49 / 255 on [0, 1])
    cg_iters: int = 20  # conjugate-gradient iterations per data step

    def __post_init__(self):
        check_ranges(self, positive=("iterations", "lam", "sigma_start", "cg_iters"))


@dataclass(frozen=True)
class DiffPirConfig:
    """DiffPIR (stochastic re-noising between proximal steps) with the clean flow prior."""

    steps: int = 20
    lam: float = 7.0  # data-term weight rho_k = lam * sigma_n^2 / sigma_k^2 (sigmas in [-1, 1] units)
    zeta: float = 0.3  # share of fresh noise when re-noising
    cg_iters: int = 20

    def __post_init__(self):
        check_ranges(self, positive=("steps", "lam", "cg_iters"), unit=("zeta",))


INVERT_METHODS: tuple[str, ...] = ("pnp", "pnp-bm3d", "diffpir", "dcdp-ode", "dcdp-tweedie", "dps")


@dataclass(frozen=True)
class InvertConfig:
    """DDM4IP step 3: restoration with the learned operator and the clean prior."""

    # pnp-bm3d: BM3D as the denoiser (no prior); dcdp-*, dps: the restoration tasks' methods
    method: Literal["pnp", "pnp-bm3d", "diffpir", "dcdp-ode", "dcdp-tweedie", "dps"] = "pnp"
    pnp: PnpConfig = field(default_factory=PnpConfig)
    diffpir: DiffPirConfig = field(default_factory=DiffPirConfig)
    dcdp: DcdpConfig = field(default_factory=DcdpConfig)
    dps: DpsConfig = field(default_factory=DpsConfig)
    noise_sigma: float | None = None  # None: the level the data was made with (degrade)
    operator: str = ""  # "" = this workspace's learned operator; else a file, folder, models:/ or runs:/ URI
    batch_size: int = 4
    seed: int = 0
    tile: int = 0  # > 0: the prior sees larger images as blended tiles of this side (bounded memory)
    precision: Literal["fp32", "bf16"] = "fp32"  # the prior's autocast on GPU
    compile: bool = False  # torch.compile the prior (eager where unavailable)

    def __post_init__(self):
        check_ranges(self, positive=("batch_size",), nonnegative=("noise_sigma", "tile"))


@dataclass(frozen=True)
class InvertTasks:
    deblur: InvertConfig = field(default_factory=InvertConfig)
    psf_grid: InvertConfig = field(default_factory=InvertConfig)
    sr_kernel: InvertConfig = field(default_factory=InvertConfig)


@dataclass(frozen=True)
class EvaluateConfig:
    grid_images: int = 4  # test images shown in the restoration grid
