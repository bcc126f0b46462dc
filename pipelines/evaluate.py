"""Stage `evaluate@<task>`: restoration and operator quality in one table.

Synthetic observations: images are compared where they overlap in the photo they were cut
from (each set keeps its place): the observation shown at the scene's resolution (bicubic for
SR), the restoration with the learned operator and the one with the true operator, against the
truth. SR is scored on the luma (Y) channel with a border of the scale factor cropped. The
learned PSFs are compared with the truth and, as floors, with a single-pixel and a uniform kernel.

Real observations (no truth): scores that need none. How well the restorations explain their
observations through the learned operator (``residual``: rms(y - A x) / sigma per image, 1 at the
noise level), the learner's observation gap, and the kernel's shape (support, centring, mass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddmops.config import EvaluateConfig
from ddmops.data import load_geometry, load_image_set
from ddmops.ddm4ip.learner import stack_errors
from ddmops.io import read_json, save_png, write_json
from ddmops.metrics import (best_translation, fourier_shift, kernel_errors, kernel_sanity, luma, psnr, residual_ratio,
                            ssim)
from ddmops.operators.psf_operator import PsfGridKernels, PsfOperator, field_positions
from ddmops.ops.serving import INFO_FILE
from ddmops.plots import image_grid
from pipelines.context import StageContext


def on_grid(y: torch.Tensor, y_top: tuple[float, float], factor: int, top: tuple[float, float],
            size: tuple[int, int]) -> torch.Tensor:
    """Resample observations y (B, C, h, w), whose pixel (0, 0) sits at photo coordinate
    ``y_top`` on a grid ``factor`` times coarser, onto the photo's pixel grid at ``top`` of
    ``size`` (bicubic; NaN outside y)."""
    axes = []
    for t, yt, n, length in zip(top, y_top, y.shape[-2:], size):
        u = (t + torch.arange(length, dtype=torch.float64) + 0.5) / factor - 0.5 - yt
        axes.append(u)
    uy, ux = axes
    grid = torch.stack(torch.meshgrid(2 * ux / (y.shape[-1] - 1) - 1, 2 * uy / (y.shape[-2] - 1) - 1,
                                      indexing="xy"), -1).float()
    out = F.grid_sample(y, grid.expand(y.shape[0], -1, -1, -1), mode="bicubic", align_corners=True)
    inside = ((uy >= -1e-6) & (uy <= y.shape[-2] - 1 + 1e-6))[:, None] & ((ux >= -1e-6) & (ux <= y.shape[-1] - 1 + 1e-6))
    return torch.where(inside.to(out.device), out, torch.full_like(out, float("nan")))


def _placed(images: torch.Tensor, geometry: torch.Tensor, truth_geometry: torch.Tensor, size) -> torch.Tensor:
    """Images at integer offsets from the truth, shifted onto the truth's grid (NaN outside)."""
    dr, dc = (geometry[0, :2] - truth_geometry[0, :2]).round().long().tolist()
    out = torch.full((images.shape[0], images.shape[1], *size), float("nan"))
    h, w = images.shape[-2:]
    r0, c0 = max(dr, 0), max(dc, 0)
    r1, c1 = min(dr + h, size[0]), min(dc + w, size[1])
    out[..., r0:r1, c0:c1] = images[..., r0 - dr:r1 - dr, c0 - dc:c1 - dc]
    return out


def registration(learned: PsfOperator, truth: PsfOperator | None) -> tuple[int, int]:
    """The translation (rows, cols) of the truth's PSF against the learned one (0, 0 for PSF grids
    or without a truth). A blur is known only up to a translation, which moves the picture: a
    restoration with the learned PSF is the truth image moved by it, so it is placed back by it."""
    if truth is None or isinstance(learned, PsfGridKernels):
        return 0, 0
    return kernel_errors(learned.psfs()[0], truth.psfs()[0]).shift


def run(cfg: EvaluateConfig, ctx: StageContext, task: str) -> dict[str, float]:
    if "observed" in read_json(ctx.ws.observed(task, "meta")):
        return unsupervised(cfg, ctx, task)
    truth = torch.stack(load_image_set(ctx.ws.prepared("test")))
    t_geom = load_geometry(ctx.ws.prepared("test"))
    size = tuple(truth.shape[-2:])
    y = torch.stack(load_image_set(ctx.ws.observed(task, "test")))
    y_geom = load_geometry(ctx.ws.observed(task, "test"))
    factor = round((t_geom[0, 2] / y_geom[0, 2]).item())
    learned = PsfOperator.load(ctx.ws.operator(task))
    truth_file = ctx.ws.observed(task, "truth")
    true_op = PsfOperator.load(truth_file) if truth_file.exists() else None
    shift = registration(learned, true_op)
    candidates = {"input": on_grid(y, tuple(y_geom[0, :2].tolist()), factor, tuple(t_geom[0, :2].tolist()), size)}
    learned_restored = None  # (images, geometry) of the learned operator's restorations
    for name, label in (("learned", "restored"), ("oracle", "oracle")):
        file = ctx.ws.restored(task, name)
        if file.exists():
            x, geom = torch.stack(load_image_set(file)), load_geometry(file).clone()
            if name == "learned":
                geom[:, :2] -= torch.tensor(shift, dtype=geom.dtype)
                learned_restored = x, geom
            candidates[label] = _placed(x, geom, t_geom, size)
    valid = torch.stack([~c[0, 0].isnan() for c in candidates.values()]).all(0)
    rows, cols = valid.any(1).nonzero().flatten(), valid.any(0).nonzero().flatten()
    b = factor if factor > 1 else 0  # SR convention: crop a border of the scale factor
    window = (slice(rows[0] + b, rows[-1] + 1 - b), slice(cols[0] + b, cols[-1] + 1 - b))
    ref = truth[..., window[0], window[1]]

    def score(x: torch.Tensor) -> torch.Tensor:
        return psnr(luma(x), luma(ref)) if factor > 1 else psnr(x, ref)

    metrics: dict[str, float] = {}
    if learned_restored is not None:  # the learned operator's translation is known to a whole pixel: refine it
        x, geom = learned_restored
        fine = best_translation(x, lambda m: score(_placed(m, geom, t_geom, size)[..., window[0], window[1]]).mean())
        candidates["restored"] = _placed(fourier_shift(x, fine), geom, t_geom, size)
        metrics |= {"restored/fine_shift_rows": fine[0], "restored/fine_shift_cols": fine[1]}
    per_image = []
    for name, x in candidates.items():
        x = x[..., window[0], window[1]]
        p = score(x)
        s = ssim(x, ref)
        metrics |= {f"psnr/{name}": p.mean().item(), f"ssim/{name}": s.mean().item()}
        per_image += [{"image": i, "method": name, "psnr": pi, "ssim": si}
                      for i, (pi, si) in enumerate(zip(p.tolist(), s.tolist()))]

    if true_op is not None:
        true = true_op.psfs()
        metrics |= {"kernel/shift_rows": shift[0], "kernel/shift_cols": shift[1]}
        metrics |= stack_errors(learned.psfs_at_nodes_of(true_op), true)
        k = true.shape[-1]
        metrics |= {"kernel/ncc_delta": sum(kernel_errors(torch.ones(1, 1), t).ncc for t in true) / len(true),
                    "kernel/ncc_uniform": sum(kernel_errors(torch.full((k, k), 1 / k ** 2), t).ncc
                                              for t in true) / len(true)}
    kernels_png = learned.picture(true_op)

    shown = {n: x[..., window[0], window[1]] for n, x in candidates.items()} | {"truth": ref}
    report(ctx, task, per_image, [{n: x[i] for n, x in shown.items()} for i in range(min(cfg.grid_images, len(truth)))],
           kernels_png)
    return metrics


def report(ctx: StageContext, task: str, per_image: list[dict], rows: list[dict[str, torch.Tensor]],
           kernels_png) -> None:
    """The per-image scores (a DVC plot), the restoration grid and the kernel picture, on disk and in MLflow."""
    out = ctx.ws.path("reports", task)
    grid_png = image_grid(rows)
    write_json(out / "per_image.json", per_image)
    save_png(out / "restoration_grid.png", grid_png)
    save_png(out / "kernel_vs_truth.png", kernels_png)
    ctx.tracker.log_image(grid_png, "restoration_grid.png")
    ctx.tracker.log_image(kernels_png, "kernel_vs_truth.png")
    ctx.tracker.log_artifact(out / "per_image.json")


def unsupervised(cfg: EvaluateConfig, ctx: StageContext, task: str) -> dict[str, float]:
    """Real observations: the restorations' data residual, the learner's scores, the kernel's shape."""
    sigma = read_json(ctx.ws.observed(task, "meta"))["noise_sigma"]
    y = torch.stack(load_image_set(ctx.ws.observed(task, "test")))
    restored_file = ctx.ws.restored(task, "learned")
    x, x_geom = torch.stack(load_image_set(restored_file)), load_geometry(restored_file)
    learned = PsfOperator.load(ctx.ws.operator(task))
    with torch.no_grad():
        ax = learned.operator(field_positions(x_geom, tuple(x.shape[-2:]))).A(x)
    residual = residual_ratio(y, ax, sigma)
    metrics = {"residual/restored": residual.mean().item(), "noise/sigma": sigma}
    metrics |= read_json(ctx.ws.operator(task).parent / INFO_FILE).get("scores", {})
    metrics |= kernel_sanity(learned.psfs())
    report(ctx, task, [{"image": i, "method": "restored", "residual": r} for i, r in enumerate(residual.tolist())],
           [{"observation": y[i].clamp(-1, 1), "restored": x[i]} for i in range(min(cfg.grid_images, len(y)))],
           learned.picture())
    return metrics
