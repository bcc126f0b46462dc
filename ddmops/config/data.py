"""Configs of the data stages: workspace paths, tracking, prepare and degrade (with the
synthetic kernels, PSF fields and SR kernels they apply)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ddmops.strict import check_ranges


@dataclass(frozen=True)
class Paths:
    """Where stages read and write, relative to the workspace (the folder of params.yaml)."""

    source: str = "data/source"  # folder of user images (see prepare.source)
    observed: str = "data/observed"  # folders of a device's real observations (degrade.<task>.observed)
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
    # folder of the embedded store (mlruns.db, artifacts in mlruns/), relative to the workspace; a
    # device workspace (`ddmops calibrate`) points at its parent's, so one registry holds every device
    root: str = "."


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
class DeblurSpec(KernelSpec):
    """The uniform blur of task `deblur`: synthetic (a kernel spec), or real (``observed``)."""

    observed: str = ""  # a folder of real observations (not synthesised; no truth)


@dataclass(frozen=True)
class ObservationsConfig:
    """How a folder of real observations is cut. Observations are never resized (a resize would
    change the operator to learn): tiles and crops at their native resolution."""

    tile_size: int = 64  # training observations: non-overlapping tiles of this side
    test_fraction: float = 0.2  # share of the images held out for test crops
    test_crops: int = 4
    test_size: int = 64
    noise_sigma: float | None = None  # None: estimated from the observations (wavelet MAD, logged)

    def __post_init__(self):
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")
        check_ranges(self, positive=("tile_size", "test_crops", "test_size"), nonnegative=("noise_sigma",))


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
    tile_size: int = 128  # observed tiles hold 4 widths of a 25 px blur (the blind start reads that)
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
    observed: str = ""  # a folder of real observations (not synthesised; no truth)

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
    observed: str = ""  # a folder of real observations (not synthesised; no truth)

    def __post_init__(self):
        if self.factor < 1 or (self.size and self.size % 2 == 0):
            raise ValueError(f"need factor >= 1 and an odd size, got {self.factor}, {self.size}")


@dataclass(frozen=True)
class DegradeConfig:
    """The forward models the DDM4IP tasks must recover, applied to the degraded pieces."""

    noise_sigma: float = 0.02  # of synthesised observations
    seed: int = 0  # the measurement noise
    observations: ObservationsConfig = field(default_factory=ObservationsConfig)  # real ones (a task's `observed`)
    deblur: DeblurSpec = field(default_factory=DeblurSpec)
    psf_grid: PsfGridSpec = field(default_factory=PsfGridSpec)
    sr_kernel: SrSpec = field(default_factory=SrSpec)

    def __post_init__(self):
        check_ranges(self, nonnegative=("noise_sigma",))
