"""Training of a flow-matching prior, with EMA, checkpoints and resume."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ddmops.config import PriorConfig
from ddmops.data import PatchSampler
from ddmops.errors import TrainingError
from ddmops.flow import path as fpath
from ddmops.flow.ema import Ema
from ddmops.flow.prior import FlowPrior
from ddmops.flow.unet import UNetArch, VelocityUNet, count_parameters
from ddmops.io import load_checkpoint, save_checkpoint
from ddmops.optim import lr_factor, set_lr
from ddmops.progress import progress_bar
from ddmops.tracking import Tracker


@dataclass(frozen=True)
class PriorTrainResult:
    steps: int
    images: int
    train_loss: float  # mean over the last logging window
    val_loss: float  # held-out flow-matching loss of the EMA weights
    seconds: float  # training time of this invocation
    images_per_sec: float
    parameters: int


def flow_matching_loss(net: torch.nn.Module, x: torch.Tensor, generator: torch.Generator,
                       time_sampling: str = "uniform", **net_kw) -> torch.Tensor:
    """mean ||v(x_t, t) - (x - eps)||^2 with x_t = (1 - t) eps + t x. x: (B, C, H, W)."""
    eps = torch.randn(x.shape, generator=generator, device=generator.device).to(x)
    t = fpath.sample_t(x.shape[0], generator, time_sampling).to(x)
    v = net(fpath.interpolate(x, eps, t), t, **net_kw)
    return torch.mean((v.float() - fpath.target_velocity(x, eps).float()) ** 2)


@torch.no_grad()
def heldout_loss(net: torch.nn.Module, patches: torch.Tensor, seed: int = 1234, batch: int = 64) -> float:
    """Flow-matching loss on fixed patches with fixed noise and times (comparable across steps)."""
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    was_training = net.training
    net.eval()
    total = 0.0
    for i in range(0, len(patches), batch):
        x = patches[i:i + batch]
        eps = torch.randn(x.shape, generator=g)
        t = (torch.arange(len(x)) + 0.5 + i) / len(patches)  # stratified times, independent of batch
        x_t = fpath.interpolate(x, eps, t)
        v = net(x_t.to(device), t.to(device))
        total += torch.sum((v.cpu() - fpath.target_velocity(x, eps)) ** 2).item() / x[0].numel()
    net.train(was_training)
    return total / len(patches)


def train_prior(cfg: PriorConfig, sampler: PatchSampler, val_patches: torch.Tensor, *, img_channels: int,
                device: torch.device, tracker: Tracker, checkpoint: Path, run_key: str, meta: dict,
                on_samples: Callable[[torch.Tensor, int], None] | None = None,
                progress: bool = True) -> tuple[FlowPrior, PriorTrainResult]:
    """Train a prior on crops from ``sampler``; resume from ``checkpoint`` if it matches ``run_key``.

    val_patches: (N, C, P, P) held-out crops. Metrics are logged with step = images seen.
    Returns the EMA prior and a summary.
    """
    arch = UNetArch.from_config(cfg.model, img_channels, cfg.patch_size)
    with torch.random.fork_rng(devices=[]):  # initial weights depend on cfg.seed only
        torch.manual_seed(cfg.seed)
        net = VelocityUNet(arch).to(device)
    ema = Ema(net, cfg.ema.kind, cfg.ema.decay, cfg.ema.std)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    per_step = cfg.batch_size * cfg.accumulation
    total_steps = cfg.images // per_step
    step = 0

    if checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=device)
        if state.get("run_key") == run_key:
            net.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            data_gen.set_state(state["data_gen"])
            noise_gen.set_state(state["noise_gen"].to(noise_gen.get_state().device))
            step = int(state["step"])

    def save() -> None:
        save_checkpoint(checkpoint, {"run_key": run_key, "step": step, "model": net.state_dict(),
                                     "ema": ema.state_dict(), "opt": opt.state_dict(),
                                     "data_gen": data_gen.get_state(), "noise_gen": noise_gen.get_state().cpu()})

    n_params = count_parameters(net)
    tracker.log_metrics({"model/parameters": n_params}, step=0)
    use_amp = device.type == "cuda" and cfg.precision != "fp32"
    amp_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.precision == "fp16")
    window, window_start, t_start = [], time.perf_counter(), time.perf_counter()
    start_step, val_loss = step, math.nan

    def crossed(every: int) -> bool:
        return (step * per_step) // every != ((step - 1) * per_step) // every

    def evaluate() -> float:
        """Held-out loss and a sample mosaic from fixed noise, logged at the current step."""
        loss = heldout_loss(ema.model, val_patches)
        tracker.log_metrics({"loss/val": loss}, step=step * per_step)
        if on_samples is not None:
            g = torch.Generator(device=device).manual_seed(cfg.seed + 99)
            shape = (16, img_channels, cfg.patch_size, cfg.patch_size)
            on_samples(FlowPrior(ema.model).sample(shape, g, cfg.sample_steps), step * per_step)
        return loss

    net.train()
    with progress_bar(f"train prior ({meta.get('domain', '')})", total_steps, step, progress) as bar:
        while step < total_steps:
            set_lr(opt, cfg.lr * lr_factor(cfg.lr_decay, step, total_steps))
            opt.zero_grad(set_to_none=True)
            for _ in range(cfg.accumulation):
                x = sampler.sample(cfg.batch_size, data_gen).to(device)
                ctx = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
                with ctx:
                    loss = flow_matching_loss(net, x, noise_gen, cfg.time_sampling)
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite flow-matching loss at step {step} "
                                        f"(images {step * per_step}); last good checkpoint kept at {checkpoint}")
                scaler.scale(loss / cfg.accumulation).backward()
                window.append(loss.item())
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            if not torch.isfinite(grad_norm):
                raise TrainingError(f"non-finite gradient at step {step}; last good checkpoint kept at {checkpoint}")
            scaler.step(opt)
            scaler.update()
            ema.update(net)
            step += 1
            images = step * per_step
            if crossed(cfg.log_every) or step == total_steps:
                elapsed = time.perf_counter() - window_start
                tracker.log_metrics({"loss/train": sum(window) / len(window), "lr": opt.param_groups[0]["lr"],
                                     "grad_norm": grad_norm.item(), "speed/it_per_sec": len(window) / cfg.accumulation / elapsed,
                                     "speed/images_per_sec": len(window) * cfg.batch_size / elapsed}, step=images)
                bar.update(step, f"loss {sum(window) / len(window):.4f}")
                last_loss, window, window_start = sum(window) / len(window), [], time.perf_counter()
            if crossed(cfg.sample_every) or step == total_steps:
                val_loss = evaluate()
            if crossed(cfg.checkpoint_every) or step == total_steps:
                save()

    seconds = time.perf_counter() - t_start
    if start_step == total_steps:  # resumed a finished run: nothing trained now
        val_loss, last_loss = evaluate(), math.nan
    done = step - start_step
    result = PriorTrainResult(steps=step, images=step * per_step, train_loss=last_loss, val_loss=val_loss,
                              seconds=seconds, images_per_sec=done * per_step / seconds if done else 0.0,
                              parameters=n_params)
    return FlowPrior(ema.model, meta), result
