"""Stage `evaluate`: restoration and kernel quality in one table.

PSNR/SSIM are computed on the central window the observation covers (a 'valid' blur
sees nothing beyond it), for the degraded input, the restoration with the learned
kernel and the restoration with the true kernel. The learned kernel is compared with
the truth and, as floors, with a single-pixel and a uniform kernel.
"""

from __future__ import annotations

import torch

from ddmops.config import EvaluateConfig
from ddmops.data import load_image_set
from ddmops.io import load_array, save_png, write_json
from ddmops.metrics import center_crop, kernel_errors, psnr, ssim
from ddmops.plots import image_grid, kernels_side_by_side
from pipelines.context import StageContext
from pipelines.learn_operator import KERNEL_FILE
from pipelines.prepare import FILES


def run(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, float]:
    prepared, restored_dir = ctx.ws.path("prepared"), ctx.ws.path("restored")
    truth = torch.stack(load_image_set(prepared / FILES["test_clean"]))
    y = torch.stack(load_image_set(prepared / FILES["test_degraded"]))
    h, w = y.shape[-2:]
    candidates = {"input": y, "restored": torch.stack(load_image_set(restored_dir / "learned.npz"))}
    if (restored_dir / "oracle.npz").exists():
        candidates["oracle"] = torch.stack(load_image_set(restored_dir / "oracle.npz"))
    ref = center_crop(truth, h, w)

    metrics: dict[str, float] = {}
    per_image = []
    for name, x in candidates.items():
        x = center_crop(x, h, w)
        p, s = psnr(x, ref), ssim(x, ref)
        metrics |= {f"psnr/{name}": p.mean().item(), f"ssim/{name}": s.mean().item()}
        per_image += [{"image": i, "method": name, "psnr": pi, "ssim": si}
                      for i, (pi, si) in enumerate(zip(p.tolist(), s.tolist()))]

    learned = torch.from_numpy(load_array(ctx.ws.path("operator", KERNEL_FILE)))
    shown = {"learned": learned}
    if (prepared / FILES["kernel"]).exists():
        true = torch.from_numpy(load_array(prepared / FILES["kernel"]))
        shown["truth"] = true
        err = kernel_errors(learned, true)
        uniform = torch.full_like(learned, 1.0 / learned.numel())
        metrics |= {"kernel/ncc": err.ncc, "kernel/mae": err.mae,
                    "kernel/ncc_delta": kernel_errors(torch.ones(1, 1), true).ncc,
                    "kernel/ncc_uniform": kernel_errors(uniform, true).ncc}

    out = ctx.ws.path("reports")
    write_json(out / "per_image.json", per_image)
    rows = [{"input": center_crop(candidates["input"][i], h, w)} |
            {n: center_crop(x[i], h, w) for n, x in candidates.items() if n != "input"} |
            {"truth": ref[i]} for i in range(min(cfg.grid_images, len(truth)))]
    grid, kernels = image_grid(rows), kernels_side_by_side(shown)
    save_png(out / "restoration_grid.png", grid)
    save_png(out / "kernel_vs_truth.png", kernels)
    ctx.tracker.log_image(grid, "restoration_grid.png")
    ctx.tracker.log_image(kernels, "kernel_vs_truth.png")
    ctx.tracker.log_artifact(out / "per_image.json")
    return metrics
