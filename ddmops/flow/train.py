"""Training of a flow-matching prior: EMA, mixed precision, data parallelism, checkpoints, resume."""

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
from ddmops.device import autocast, compiled
from ddmops.flow.ema import Ema
from ddmops.flow.loss import draw_noise, heldout_loss, velocity_loss
from ddmops.flow.prior import FlowPrior
from ddmops.flow.unet import UNetArch, VelocityUNet, count_parameters
from ddmops.loop import schedule
from ddmops.loop.checkpoint import Resumable
from ddmops.loop.distributed import Dist
from ddmops.loop.guard import NanGuard
from ddmops.loop.meters import WindowMeans
from ddmops.loop.progress import progress_bar
from ddmops.loop.schedule import lr_factor, set_lr
from ddmops.tracker import Tracker


@dataclass(frozen=True)
class PriorTrainResult:
    steps: int
    images: int
    train_loss: float  # mean over the last logging window
    val_loss: float  # held-out flow-matching loss of the EMA weights
    seconds: float  # training time of this invocation
    images_per_sec: float
    parameters: int


class _State:
    """Network, EMA, optimiser and generators: everything a checkpoint must restore."""

    def __init__(self, cfg: PriorConfig, arch: UNetArch, device: torch.device, checkpoint: Path, run_key: str):
        with torch.random.fork_rng(devices=[]):  # initial weights depend on cfg.seed only
            torch.manual_seed(cfg.seed)
            self.net = VelocityUNet(arch).to(device)
        self.ema = Ema(self.net, cfg.ema.kind, cfg.ema.decay, cfg.ema.std)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=cfg.betas, fused=True)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.saved = Resumable(checkpoint, run_key, model=self.net, ema=self.ema, opt=self.opt,
                               data_gen=self.data_gen, noise_gen=self.noise_gen)
        self.step = self.saved.resume(device)  # a checkpoint of the same run (stage, config, data)


def train_prior(cfg: PriorConfig, sampler: PatchSampler, val_patches: torch.Tensor, *, img_channels: int,
                device: torch.device, tracker: Tracker, checkpoint: Path, run_key: str, meta: dict,
                on_samples: Callable[[torch.Tensor, int], None] | None = None,
                progress: bool = True, dist: Dist = Dist(), val_positions: torch.Tensor | None = None,
                nan_policy: str = "stop") -> tuple[FlowPrior, PriorTrainResult]:
    """Train a prior on crops from ``sampler``; resume from ``checkpoint`` if it matches ``run_key``.

    val_patches: (N, C, P, P) held-out crops (val_positions (N, 2, P, P) their field
    positions, for a network with position channels, which then trains on positioned crops).
    Metrics are logged with step = images seen. A non-finite loss or gradient stops
    training (``nan_policy='stop'``) or drops the batch (``'skip-batch'``).
    Under ``dist`` each process trains on its slice of every global batch; only the main
    process logs, samples and writes checkpoints. Returns the EMA prior and a summary.
    """
    per_step = cfg.batch_size * cfg.accumulation
    positional = cfg.model.position_channels
    total_steps = cfg.images // per_step
    s = _State(cfg, UNetArch.from_config(cfg.model, img_channels, cfg.patch_size), device, checkpoint, run_key)
    sampler = sampler.to(device)
    model = dist.wrap(s.net, device)
    forward = compiled(model, cfg.compile, "prior training")
    shard = dist.shard(cfg.batch_size)
    n_params = count_parameters(s.net)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.precision == "fp16")
    start_step, val_loss, last_loss = s.step, math.nan, math.nan
    window = WindowMeans()
    t_start = time.perf_counter()
    if dist.is_main:
        tracker.log_metrics({"model/parameters": n_params}, step=0)

    def crossed(every: int) -> bool:
        return schedule.crossed(s.step, per_step, every)

    def evaluate() -> float:
        """Held-out loss and a sample mosaic from fixed noise, logged at the current step."""
        loss = heldout_loss(s.ema.model, val_patches, val_positions if positional else None)
        tracker.log_metrics({"loss/val": loss}, step=s.step * per_step)
        if on_samples is not None:
            g = torch.Generator(device=device).manual_seed(cfg.seed + 99)
            n = min(16, len(val_patches))
            kw = {"position": val_positions[:n].to(device)} if positional else {}
            shape = (n, img_channels, cfg.patch_size, cfg.patch_size)
            on_samples(FlowPrior(s.ema.model).sample(shape, g, cfg.sample_steps, **kw), s.step * per_step)
        return loss

    guard = NanGuard(nan_policy, checkpoint)
    s.net.train()
    with progress_bar(f"train prior ({meta.get('domain', '')})", total_steps, s.step,
                      progress and dist.is_main) as bar:
        while s.step < total_steps:
            set_lr(s.opt, cfg.lr * lr_factor(cfg.lr_decay, s.step, total_steps))
            s.opt.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            for micro in range(cfg.accumulation):
                # the global batch, the same on every rank
                if positional:
                    x, pos = sampler.sample_with_position(cfg.batch_size, s.data_gen)
                    kw = {"position": pos[shard]}
                else:
                    x, kw = sampler.sample(cfg.batch_size, s.data_gen), {}
                eps, t = draw_noise(x.shape, s.noise_gen, cfg.time_sampling)
                sync = micro == cfg.accumulation - 1 or dist.world == 1
                with (contextlib.nullcontext() if sync else model.no_sync()):
                    with autocast(device, cfg.precision):
                        loss = velocity_loss(forward, x[shard], eps[shard], t[shard], **kw)
                    scaler.scale(loss / cfg.accumulation).backward()
                step_loss += loss.detach() / cfg.accumulation
            scaler.unscale_(s.opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(s.net.parameters(), cfg.grad_clip)
            ok = guard.ok(s.step, {"flow-matching loss or gradient": grad_norm})  # same on every rank
            if scaler.is_enabled():  # fp16: the scaler skips steps with inf/NaN gradients itself
                scaler.step(s.opt)
            else:  # decided on the device: no host synchronisation
                s.opt.found_inf = (~ok).float()
                s.opt.step()
            s.ema.update(s.net, ok)
            scaler.update()
            window.add({"loss/train": torch.where(ok, step_loss, torch.nan)})
            s.step += 1
            images = s.step * per_step
            if crossed(cfg.log_every) or s.step == total_steps:
                guard.check()
                means, steps, elapsed = window.read()
                last_loss = dist.mean(means["loss/train"])
                if dist.is_main:
                    tracker.log_metrics({"loss/train": last_loss, "lr": s.opt.param_groups[0]["lr"],
                                         "grad_norm": float(grad_norm),
                                         "speed/it_per_sec": steps / elapsed,
                                         "speed/images_per_sec": steps * per_step / elapsed,
                                         "train/skipped_batches": guard.skipped},
                                        step=images)
                bar.update(s.step, f"loss {last_loss:.4f}")
            if dist.is_main and (crossed(cfg.sample_every) or s.step == total_steps):
                val_loss = evaluate()
            if dist.is_main and (crossed(cfg.checkpoint_every) or s.step == total_steps):
                guard.check()  # never save past a non-finite step
                s.saved.save(s.step)

    seconds = time.perf_counter() - t_start
    if start_step == total_steps and dist.is_main:  # resumed a finished run: nothing trained now
        val_loss = evaluate()
    done = s.step - start_step
    result = PriorTrainResult(steps=s.step, images=s.step * per_step, train_loss=last_loss, val_loss=val_loss,
                              seconds=seconds, images_per_sec=done * per_step / seconds if done else 0.0,
                              parameters=n_params)
    return FlowPrior(s.ema.model, meta), result
