"""Forward models described by their PSFs: the operator families DDM4IP learns.

One typed value per family, each knowing its family, checking its PSFs, saving and loading
itself, building its :class:`~ddmops.operators.base.Operator` ('valid' at the borders) and
drawing itself:

- :class:`BlurKernel` (family ``blur``, task ``deblur``): one kernel (K, K) for the whole field;
- :class:`PsfGridKernels` (``psf_grid``): PSFs (Gy, Gx, K, K) at the field positions
  x = linspace(0, 1, Gx), y = linspace(0, 1, Gy), bilinearly interpolated in between;
- :class:`SrKernel` (``sr_kernel``): a kernel (K, K) followed by subsampling by ``factor``.

On disk an operator is ``operator.npz`` holding its arrays and its ``family`` (a string), or a
bare ``.npy`` PSF (K, K) / PSF grid (Gy, Gx, K, K). Files written before the family was stored
are recognised by their array names (:func:`_legacy_family`), the only place that looks at them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ddmops.errors import DataError
from ddmops.io import save_npz
from ddmops.operators.base import Operator
from ddmops.operators.blur import Blur
from ddmops.operators.kernels import validate_psf
from ddmops.operators.psf_grid import PsfGrid, position_map, psf_at
from ddmops.operators.sr import Downsample

OPERATOR_FILE = "operator.npz"


@dataclass(frozen=True, eq=False)
class PsfOperator(ABC):
    """A forward model given by PSFs; subclasses are the families. ``factor`` is the subsampling
    after the blur (1 but for SR); ``source`` names where the operator came from in errors."""

    family: ClassVar[str]
    task: ClassVar[str]  # the DDM4IP task that learns this family
    needs_position: ClassVar[bool] = False  # its operator needs the images' field positions
    source: str = field(default="operator", kw_only=True)

    def __post_init__(self):
        for name, array in self.arrays().items():
            if name != "factor":
                validate_psf(array, f"{self.source}:{name}")  # checked; kept as given, bit for bit

    # --- what every family provides

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays saved in operator.npz (besides ``family``)."""

    @abstractmethod
    def grid_array(self) -> np.ndarray:
        """Every PSF as a grid (Gy, Gx, K, K) float32 (a single kernel: 1 x 1)."""

    @abstractmethod
    def operator(self, position: torch.Tensor | None = None) -> Operator:
        """The 'valid' forward model for images at field positions ``position`` (B, 2, H, W)."""

    @classmethod
    @abstractmethod
    def from_psfs(cls, psfs: torch.Tensor, like: "PsfOperator | None" = None, **shape) -> "PsfOperator":
        """The operator of a PSF stack (N, K, K) (a learner's estimate), each PSF clipped at 0
        and scaled to sum 1; ``shape`` (or ``like``) gives what the stack does not (grid, factor)."""

    # --- derived

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.grid_array().shape[:2])

    @property
    def kernel_size(self) -> int:
        return int(self.grid_array().shape[-1])

    def psfs(self) -> torch.Tensor:
        """(N, K, K) float32: the kernel, or the grid's PSFs row by row."""
        return torch.from_numpy(np.ascontiguousarray(self.grid_array())).flatten(0, 1).float()

    def psfs_at_nodes_of(self, other: "PsfOperator") -> torch.Tensor:
        """This operator's PSFs (N, K, K) where ``other`` has its PSFs: a grid is read at the
        other grid's nodes, so grids of different sizes still compare."""
        if not (self.needs_position and other.needs_position):
            return self.psfs()
        gy, gx = other.grid_shape
        nodes = torch.tensor([[j / max(gx - 1, 1), i / max(gy - 1, 1)] for i in range(gy) for j in range(gx)])
        return psf_at(torch.from_numpy(self.grid_array()).float(), nodes, normalise=True)

    def input_size(self, y_size: tuple[int, int]) -> tuple[int, int]:
        """Side lengths of the image behind an observation of ``y_size``."""
        s, k = self.factor, self.kernel_size
        return (y_size[0] - 1) * s + k, (y_size[1] - 1) * s + k

    def output_geometry(self, geometry: torch.Tensor) -> torch.Tensor:
        """Places (top, left, full_h, full_w) of the observations of images at ``geometry`` (N, 4).

        A 'valid' blur's output pixel sits at the centre of its kernel window; an SR output
        pixel j at input coordinate j s + (K - 1) / 2, on a grid s times coarser."""
        s, k = self.factor, self.kernel_size
        g = geometry.double().clone()
        g[:, :2] = (g[:, :2] + (k - 1) / 2 + 0.5) / s - 0.5
        g[:, 2:] = g[:, 2:] / s
        return g

    def input_geometry(self, geometry: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`output_geometry`: where the images behind observations at ``geometry`` sit."""
        s, k = self.factor, self.kernel_size
        g = geometry.double().clone()
        g[:, :2] = (g[:, :2] + 0.5) * s - 0.5 - (k - 1) / 2
        g[:, 2:] = g[:, 2:] * s
        return g

    def picture(self, truth: "PsfOperator | None" = None, label: str = "estimate") -> np.ndarray:
        """This operator's PSFs (against ``truth``'s, with their error, when given) as a picture."""
        from ddmops.plots import psf_comparison
        if truth is None:
            return psf_comparison(self.psfs(), None, self.grid_shape if self.needs_position else None, label)
        return psf_comparison(self.psfs_at_nodes_of(truth), truth.psfs(),
                              truth.grid_shape if truth.needs_position else None)

    def save(self, path: Path) -> None:
        save_npz(Path(path), {**self.arrays(), "family": np.array(self.family)})

    @staticmethod
    def load(path: str | Path) -> "PsfOperator":
        """An operator from ``operator.npz`` (or a folder holding it) or a ``.npy`` PSF / PSF grid;
        every PSF is checked (odd, square, finite, >= 0, sums to 1)."""
        path = Path(path)
        if path.is_dir():
            path = path / OPERATOR_FILE
        if not path.is_file():
            raise DataError(f"{path}: operator file not found")
        try:
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.ndarray):
                family = "psf_grid" if data.ndim == 4 else "blur"
                arrays = {"psf_grid" if data.ndim == 4 else "kernel": data}
            else:
                with data:
                    arrays = {k: data[k] for k in data.files}
                named = arrays.pop("family", None)
                family = str(named) if named is not None else _legacy_family(arrays, path)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable operator file ({exc})") from None
        if family not in FAMILIES:
            raise DataError(f"{path}: unknown operator family {family!r} (known: {', '.join(FAMILIES)})")
        cls = FAMILIES[family]
        if set(arrays) != set(cls.array_names()):
            raise DataError(f"{path}: a {family} operator holds {', '.join(cls.array_names())}, "
                            f"found {', '.join(sorted(arrays)) or 'nothing'}")
        return cls(**arrays, source=str(path))

    @classmethod
    def array_names(cls) -> tuple[str, ...]:
        """The arrays a file of this family holds: the class's data fields."""
        return tuple(f.name for f in fields(cls) if f.name != "source")


def _normalised(psfs: torch.Tensor) -> np.ndarray:
    k = psfs.detach().cpu().double().clamp_min(0)
    return (k / k.sum((-2, -1), keepdim=True)).float().numpy()


@dataclass(frozen=True, eq=False)
class BlurKernel(PsfOperator):
    """A uniform blur: ``kernel`` (K, K), K odd, true (flipped) convolution."""

    kernel: np.ndarray
    family: ClassVar[str] = "blur"
    task: ClassVar[str] = "deblur"
    factor: ClassVar[int] = 1

    def arrays(self):
        return {"kernel": np.asarray(self.kernel)}

    def grid_array(self):
        return np.asarray(self.kernel, np.float32)[None, None]

    def operator(self, position=None):
        return Blur(torch.as_tensor(np.asarray(self.kernel)), "valid")

    @classmethod
    def from_psfs(cls, psfs, like=None, **shape):
        return cls(_normalised(psfs)[0])


@dataclass(frozen=True, eq=False)
class PsfGridKernels(PsfOperator):
    """A space-varying blur: ``psf_grid`` (Gy, Gx, K, K) of PSFs over the field (see
    :class:`~ddmops.operators.psf_grid.PsfGrid`)."""

    psf_grid: np.ndarray
    family: ClassVar[str] = "psf_grid"
    task: ClassVar[str] = "psf_grid"
    factor: ClassVar[int] = 1
    needs_position: ClassVar[bool] = True

    def __post_init__(self):
        if np.ndim(self.psf_grid) != 4:
            raise DataError(f"{self.source}: a PSF grid is (Gy, Gx, K, K), got shape {np.shape(self.psf_grid)}")
        super().__post_init__()

    def arrays(self):
        return {"psf_grid": np.asarray(self.psf_grid)}

    def grid_array(self):
        return np.asarray(self.psf_grid, np.float32)

    def operator(self, position=None):
        if position is None:
            raise DataError("a PSF-grid operator needs the field positions of the images")
        return PsfGrid(torch.as_tensor(np.asarray(self.psf_grid)), position)

    @classmethod
    def from_psfs(cls, psfs, like=None, **shape):
        grid = shape.get("grid") or like.grid_shape
        return cls(_normalised(psfs).reshape(*grid, *psfs.shape[-2:]))


@dataclass(frozen=True, eq=False)
class SrKernel(PsfOperator):
    """Downsampling: blur by ``kernel`` (K, K), then keep every ``factor``-th pixel."""

    kernel: np.ndarray
    factor: int
    family: ClassVar[str] = "sr_kernel"
    task: ClassVar[str] = "sr_kernel"

    def __post_init__(self):
        object.__setattr__(self, "factor", int(self.factor))  # a 0-d array in operator.npz
        if self.factor < 1:
            raise DataError(f"{self.source}: SR factor must be >= 1, got {self.factor}")
        super().__post_init__()

    def arrays(self):
        return {"kernel": np.asarray(self.kernel), "factor": np.array(self.factor)}

    def grid_array(self):
        return np.asarray(self.kernel, np.float32)[None, None]

    def operator(self, position=None):
        kernel = torch.as_tensor(np.asarray(self.kernel))
        return Downsample(kernel, self.factor, "valid") if self.factor > 1 else Blur(kernel, "valid")

    @classmethod
    def from_psfs(cls, psfs, like=None, **shape):
        return cls(_normalised(psfs)[0], shape.get("factor") or like.factor)


FAMILIES: dict[str, type[PsfOperator]] = {c.family: c for c in (BlurKernel, PsfGridKernels, SrKernel)}
FAMILY_OF_TASK: dict[str, type[PsfOperator]] = {c.task: c for c in FAMILIES.values()}


def _legacy_family(arrays: dict[str, np.ndarray], path: Path) -> str:
    """The family of an operator file written before files named it, from its array names."""
    for cls in FAMILIES.values():
        if set(arrays) == set(cls.array_names()):
            return cls.family
    raise DataError(f"{path}: an operator file holds {' or '.join('+'.join(c.array_names()) for c in FAMILIES.values())}, "
                    f"found {', '.join(sorted(arrays)) or 'nothing'}")


def field_positions(geometry: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 2, h, w) field positions of N images of ``size`` at ``geometry`` (N, 4)."""
    return torch.stack([position_map(*size, *g) for g in geometry.tolist()])
