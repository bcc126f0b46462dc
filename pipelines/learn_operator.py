"""Stage `learn-operator`: DDM4IP step 2, the blur kernel from unpaired clean and degraded sets."""

from __future__ import annotations

import torch

from ddmops.config import LearnOperatorConfig
from ddmops.data import PatchSampler, load_image_set
from ddmops.ddm4ip.learner import learn_operator, stack_errors
from ddmops.ddm4ip.models import KernelModel
from ddmops.flow.prior import FlowPrior
from ddmops.io import load_array, read_json, save_array, save_png, write_json
from ddmops.plots import kernels_side_by_side
from pipelines.context import StageContext
from pipelines.prepare import FILES
from pipelines.train_prior import PRIOR_FILE

KERNEL_FILE, OPERATOR_FILE = "kernel.npy", "operator.json"


def run(cfg: LearnOperatorConfig, ctx: StageContext) -> dict[str, float]:
    prepared, out = ctx.ws.path("prepared"), ctx.ws.path("operator")
    meta = read_json(prepared / FILES["meta"])
    sigma = meta["noise_sigma"] if cfg.noise_sigma is None else cfg.noise_sigma
    prior = FlowPrior.load(ctx.ws.path("priors", "degraded", PRIOR_FILE), ctx.device)
    model = KernelModel(cfg.kernel_size, cfg.init, torch.Generator().manual_seed(cfg.seed), cfg.param)
    clean = PatchSampler(load_image_set(prepared / FILES["clean"]), model.input_size(int(prior.meta["patch_size"])),
                         flips=True)
    true_path = prepared / FILES["kernel"]
    true_kernel = torch.from_numpy(load_array(true_path)) if true_path.exists() else None

    def on_kernels(k: torch.Tensor, images_seen: int) -> None:
        shown = {"estimate": k[0]} | ({"truth": true_kernel} if true_kernel is not None else {})
        ctx.tracker.log_image(kernels_side_by_side(shown), f"kernels/{images_seen:09d}.png")

    result = learn_operator(cfg, model, clean, prior, sigma=sigma, device=ctx.device, tracker=ctx.tracker,
                            checkpoint=ctx.ws.path("checkpoints", "learn-operator.pt"), run_key=ctx.run_key,
                            truth=true_kernel[None] if true_kernel is not None else None,
                            on_kernels=on_kernels, progress=ctx.progress)
    kernel = result.kernels[0]
    save_array(out / KERNEL_FILE, kernel.numpy())
    write_json(out / OPERATOR_FILE, {"task": cfg.task, "family": "blur", "kernel_size": cfg.kernel_size,
                                     "padding": "valid", "noise_sigma": sigma})
    shown = {"estimate": kernel} | ({"truth": true_kernel} if true_kernel is not None else {})
    save_png(out / "kernel.png", kernels_side_by_side(shown))
    ctx.tracker.log_artifact(out / KERNEL_FILE, "operator")
    ctx.tracker.log_artifact(out / OPERATOR_FILE, "operator")
    ctx.tracker.log_artifact(out / "kernel.png", "operator")
    metrics = {f"{k}": v for k, v in result.losses.items() if k.startswith("loss/")}
    metrics |= {"train/steps": result.steps, "train/images": result.images, "train/seconds": result.seconds}
    if true_kernel is not None:
        metrics |= stack_errors(kernel[None], true_kernel[None])
    return metrics
