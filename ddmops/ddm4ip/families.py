"""The three DDM4IP tasks and their operator families, through plain arrays.

An operator is saved, registered and served as arrays: a blur ``{"kernel": (K, K)}``, a PSF
grid ``{"psf_grid": (Gy, Gx, K, K)}`` or an SR kernel ``{"kernel": (K, K), "factor": ()}``.
This module turns them into the synthetic truth, the learnable model, the operator used
for restoration, and the PSF stack (N, K, K) that kernel metrics compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddmops.config import DegradeConfig, LearnOperatorConfig
from ddmops.data import make_kernel
from ddmops.ddm4ip.models import KernelModel, PsfGridModel, SrKernelModel
from ddmops.errors import DataError
from ddmops.operators.base import Operator
from ddmops.operators.blur import Blur
from ddmops.operators.kernels import lens_psf_grid, load_kernel, sr_kernel, validate_psf
from ddmops.operators.psf_grid import PsfGrid, position_map, psf_at
from ddmops.operators.sr import Downsample

FAMILY = {"deblur": "blur", "psf_grid": "psf_grid", "sr_kernel": "sr_kernel"}
Arrays = dict[str, np.ndarray]
OPERATOR_FILE, INFO_FILE = "operator.npz", "operator.json"  # an operator folder: learn-operator's, a model's
MODEL_FOLDER = Path("artifacts") / "operator"  # the operator folder inside a registered MLflow model
URI_SCHEMES = ("models:/", "runs:/")


def _resolve(path: str, root: Path) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


def true_operator(task: str, cfg: DegradeConfig, root: Path) -> Arrays:
    """The synthetic forward model of ``task`` described by ``cfg`` (seeded)."""
    if task == "deblur":
        return {"kernel": make_kernel(cfg.deblur, root).numpy()}
    if task == "psf_grid":
        spec = cfg.psf_grid
        if spec.path:
            grid = np.load(_resolve(spec.path, root), allow_pickle=False)
            return {"psf_grid": validate_psf(grid, spec.path).numpy()}
        g = torch.Generator().manual_seed(spec.seed)
        return {"psf_grid": lens_psf_grid(spec.grid, spec.size, g, spec.sigma, spec.astigmatism, spec.coma).numpy()}
    spec = cfg.sr_kernel
    if spec.path:
        kernel = load_kernel(_resolve(spec.path, root))
    else:
        kernel = sr_kernel(spec.factor, torch.Generator().manual_seed(spec.seed), spec.size or None, spec.noise)
    return {"kernel": kernel.numpy(), "factor": np.array(spec.factor)}


def build_operator(arrays: Arrays, position: torch.Tensor | None = None) -> Operator:
    """The 'valid'-padding operator of these arrays; a PSF grid needs the images' positions
    (B, 2, H, W)."""
    if "psf_grid" in arrays:
        if position is None:
            raise DataError("a PSF-grid operator needs the field positions of the images")
        return PsfGrid(torch.as_tensor(arrays["psf_grid"]), position)
    kernel = torch.as_tensor(arrays["kernel"])
    if "factor" in arrays and int(arrays["factor"]) > 1:
        return Downsample(kernel, int(arrays["factor"]), "valid")
    return Blur(kernel, "valid")


def psf_stack(arrays: Arrays) -> torch.Tensor:
    """(N, K, K): the kernel, or the grid's PSFs row by row."""
    if "psf_grid" in arrays:
        return torch.as_tensor(arrays["psf_grid"]).flatten(0, 1).float()
    return torch.as_tensor(arrays["kernel"])[None].float()


def build_model(task: str, cfg: LearnOperatorConfig, generator: torch.Generator) -> torch.nn.Module:
    """The learnable forward model of ``task``."""
    if task == "deblur":
        return KernelModel(cfg.kernel_size, cfg.init, generator, cfg.param)
    if task == "psf_grid":
        return PsfGridModel(cfg.grid, cfg.kernel_size, cfg.init, generator)
    return SrKernelModel(cfg.factor, generator, cfg.sr_struct, cfg.sr_channels, "gaussian")


def learned_arrays(task: str, kernels: torch.Tensor, cfg: LearnOperatorConfig) -> Arrays:
    """The arrays of a learned operator from its PSF stack (N, K, K). Each PSF is clipped at 0
    and scaled to sum to 1: exact already for blur kernels and grids, the final step for an SR
    kernel (whose sum is only pulled towards 1 during learning, as in KernelGAN)."""
    k = kernels.detach().cpu().double().clamp_min(0)
    k = (k / k.sum((-2, -1), keepdim=True)).float().numpy()
    if task == "deblur":
        return {"kernel": k[0]}
    if task == "psf_grid":
        return {"psf_grid": k.reshape(*cfg.grid, *k.shape[-2:])}
    return {"kernel": k[0], "factor": np.array(cfg.factor)}


def output_geometry(arrays: Arrays, geometry: torch.Tensor) -> torch.Tensor:
    """Places (top, left, full_h, full_w) of the observations of images at ``geometry`` (N, 4).

    A 'valid' blur's output pixel sits at the centre of its kernel window; an SR output
    pixel j at input coordinate j s + (K - 1) / 2, on a grid s times coarser.
    """
    k = psf_stack(arrays).shape[-1]
    s = int(arrays["factor"]) if "factor" in arrays else 1
    g = geometry.double().clone()
    g[:, :2] = (g[:, :2] + (k - 1) / 2 + 0.5) / s - 0.5
    g[:, 2:] = g[:, 2:] / s
    return g


def input_geometry(arrays: Arrays, geometry: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`output_geometry`: where the images behind observations at ``geometry`` sit."""
    k = psf_stack(arrays).shape[-1]
    s = int(arrays["factor"]) if "factor" in arrays else 1
    g = geometry.double().clone()
    g[:, :2] = (g[:, :2] + 0.5) * s - 0.5 - (k - 1) / 2
    g[:, 2:] = g[:, 2:] * s
    return g


def input_size(arrays: Arrays, y_size: tuple[int, int]) -> tuple[int, int]:
    """Side lengths of the image behind an observation of ``y_size`` ('valid' operators)."""
    k = psf_stack(arrays).shape[-1]
    s = int(arrays["factor"]) if "factor" in arrays else 1
    return (y_size[0] - 1) * s + k, (y_size[1] - 1) * s + k


def positions(geometry: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 2, h, w) field positions of N images of ``size`` at ``geometry`` (N, 4)."""
    return torch.stack([position_map(*size, *g) for g in geometry.tolist()])


def resolve_operator(ref: str, root: Path) -> tuple[Arrays, dict[str, str]]:
    """The operator ``ref`` names, and provenance tags: ``ddmops.operator`` and, for a registered
    model, ``ddmops.operator.model``, ``.version`` (the one an alias names now) and ``.run_id``.

    ref: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/<path>``, or a
    file or folder (relative to ``root``) that :func:`load_arrays` reads.
    """
    if ref.startswith(URI_SCHEMES):
        from ddmops.ops.registry import fetch_operator  # imports MLflow
        return fetch_operator(ref)
    path = _resolve(ref, root)
    return load_arrays(path), {"ddmops.operator": str(path)}


def load_arrays(source: str | Path) -> Arrays:
    """An operator from a file: .npz of arrays (as `learn-operator` writes), or a .npy
    kernel (K, K) / PSF grid (Gy, Gx, K, K), or from a folder holding operator.npz (an operator
    folder, or a registered model's); every PSF is checked (odd, square, finite, >= 0, sums to 1)."""
    path = Path(source)
    if path.is_dir():
        path = path / MODEL_FOLDER / OPERATOR_FILE if (path / "MLmodel").is_file() else path / OPERATOR_FILE
    if not path.is_file():
        raise DataError(f"{path}: operator file not found")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            arrays = {"psf": data}
        else:
            with data:
                arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable operator file ({exc})") from None
    if "psf" in arrays:
        psf = arrays.pop("psf")
        arrays["psf_grid" if psf.ndim == 4 else "kernel"] = psf
    if not {"kernel", "psf_grid"} & set(arrays):
        raise DataError(f"{path}: an operator file holds 'kernel' or 'psf_grid', found {sorted(arrays)}")
    key = "psf_grid" if "psf_grid" in arrays else "kernel"
    validate_psf(arrays[key], f"{path}:{key}")  # checked; kept as stored, bit for bit
    return arrays


def psfs_like(estimate: Arrays, truth: Arrays) -> torch.Tensor:
    """The estimate's PSFs (N, K, K) where the truth has its PSFs: a grid is read at the true
    grid's nodes, so grids of different sizes still compare."""
    if "psf_grid" in estimate and "psf_grid" in truth:
        gy, gx = truth["psf_grid"].shape[:2]
        nodes = torch.tensor([[j / max(gx - 1, 1), i / max(gy - 1, 1)] for i in range(gy) for j in range(gx)])
        return psf_at(torch.as_tensor(estimate["psf_grid"]).float(), nodes, normalise=True)
    return psf_stack(estimate)
