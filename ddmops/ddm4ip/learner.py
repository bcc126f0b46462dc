"""Alternating updates of DDM4IP step 2 for a uniform blur kernel.

Each step (a) trains the auxiliary flow v_aux on simulated observations
y = A_phi(x) + sigma n from clean crops x (phi frozen), then (b) updates phi with the
distribution-matching loss against the frozen prior v_pre of the real degraded data.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ddmops.config import LearnOperatorConfig
from ddmops.data import PatchSampler
from ddmops.ddm4ip.objective import distribution_matching_loss, kernel_regularisers
from ddmops.errors import TrainingError
from ddmops.flow.prior import FlowPrior
from ddmops.flow.train import flow_matching_loss
from ddmops.io import load_checkpoint, save_checkpoint
from ddmops.metrics import kernel_errors
from ddmops.operators.blur import convolve
from ddmops.operators.kernels import gaussian_kernel
from ddmops.optim import lr_factor, set_lr
from ddmops.progress import progress_bar
from ddmops.tracking import Tracker


class LearnableKernel(torch.nn.Module):
    """A free (K, K) parameter mapped to a non-negative kernel summing to 1.

    'abs' (DDM4IP): k = |raw| / sum|raw|. 'softmax': k = softmax(raw), so an optimiser step
    changes every entry by a relative amount and small tails shrink geometrically.
    """

    def __init__(self, size: int, init: str, generator: torch.Generator, param: str = "abs"):
        super().__init__()
        if init == "gaussian":  # broad and centred: no corner mass to shed
            k = gaussian_kernel(size, (size / 4, size / 4))
        elif init == "uniform":
            k = torch.full((size, size), 1.0 / size ** 2)
        elif init == "random":
            k = torch.randn(size, size, generator=generator).abs()
        else:
            raise ValueError(f"unknown kernel init {init!r}")
        if param not in ("abs", "softmax"):
            raise ValueError(f"unknown kernel parametrisation {param!r}")
        self.param = param
        k = k / k.sum()
        self.raw = torch.nn.Parameter(k.clamp_min(1e-8).log() if param == "softmax" else k)

    def unnormalised(self) -> torch.Tensor:
        return self.raw.abs() if self.param == "abs" else self.raw.exp()

    def kernel(self) -> torch.Tensor:
        if self.param == "softmax":
            return torch.softmax(self.raw.flatten(), 0).reshape(self.raw.shape)
        k = self.raw.abs()
        return k / k.sum().clamp_min(1e-12)


@dataclass(frozen=True)
class KernelLearnResult:
    kernel: torch.Tensor  # (K, K), the moving average if enabled
    steps: int
    images: int
    seconds: float
    losses: dict[str, float]  # last logged values


def learn_kernel(cfg: LearnOperatorConfig, clean: PatchSampler, degraded_prior: FlowPrior, *, sigma: float,
                 device: torch.device, tracker: Tracker, checkpoint: Path, run_key: str,
                 true_kernel: torch.Tensor | None = None,
                 on_kernel: Callable[[torch.Tensor, int], None] | None = None,
                 progress: bool = True) -> KernelLearnResult:
    """Learn a blur kernel from clean crops (``clean`` samples (B, C, P+K-1, P+K-1)) and the prior
    of the degraded data. ``true_kernel`` (if known) only feeds the logged error curves."""
    data_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    model = LearnableKernel(cfg.kernel_size, cfg.init, data_gen, cfg.param).to(device)
    v_pre = degraded_prior.to(device)
    aux = copy.deepcopy(v_pre.net).train().requires_grad_(True)
    opt_k = torch.optim.Adam(model.parameters(), lr=cfg.lr_kernel, betas=cfg.betas)
    opt_aux = torch.optim.Adam(aux.parameters(), lr=cfg.lr_aux, betas=cfg.betas)
    ema_kernel = model.kernel().detach().clone()
    total_steps = max(1, cfg.images // cfg.batch_size)
    step = 0

    if checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=device)
        if state.get("run_key") == run_key:
            model.load_state_dict(state["kernel"])
            aux.load_state_dict(state["aux"])
            opt_k.load_state_dict(state["opt_kernel"])
            opt_aux.load_state_dict(state["opt_aux"])
            ema_kernel = state["ema_kernel"].to(device)
            data_gen.set_state(state["data_gen"])
            noise_gen.set_state(state["noise_gen"].to(noise_gen.get_state().device))
            step = int(state["step"])

    def save() -> None:
        save_checkpoint(checkpoint, {"run_key": run_key, "step": step, "kernel": model.state_dict(),
                                     "aux": aux.state_dict(), "opt_kernel": opt_k.state_dict(),
                                     "opt_aux": opt_aux.state_dict(), "ema_kernel": ema_kernel,
                                     "data_gen": data_gen.get_state(), "noise_gen": noise_gen.get_state().cpu()})

    def simulate(x: torch.Tensor) -> torch.Tensor:
        y = convolve(x, model.kernel(), "valid")
        return y + sigma * torch.randn(y.shape, generator=noise_gen, device=noise_gen.device).to(y)

    def crossed(every: int) -> bool:
        return (step * cfg.batch_size) // every != ((step - 1) * cfg.batch_size) // every

    def check(name: str, value: torch.Tensor) -> None:
        if not torch.isfinite(value):
            raise TrainingError(f"non-finite {name} at step {step}; last good checkpoint kept at {checkpoint}")

    t0, logged = time.perf_counter(), {}
    window: dict[str, list[float]] = {}
    with progress_bar("learn kernel", total_steps, step, progress) as bar:
        while step < total_steps:
            scale = lr_factor(cfg.lr_decay, step, total_steps)
            set_lr(opt_k, cfg.lr_kernel * scale)
            set_lr(opt_aux, cfg.lr_aux * scale)
            # (a) auxiliary flow on simulated observations, kernel frozen
            with torch.no_grad():
                y = simulate(clean.sample(cfg.batch_size, data_gen).to(device))
            loss_aux = flow_matching_loss(aux, y, noise_gen)
            check("auxiliary flow-matching loss", loss_aux)
            opt_aux.zero_grad(set_to_none=True)
            loss_aux.backward()
            opt_aux.step()
            # (b) kernel update through y = A_phi(x) + sigma n
            y = simulate(clean.sample(cfg.batch_size, data_gen).to(device))
            loss_dm = distribution_matching_loss(y, lambda z, t: aux(z, t), v_pre.velocity, noise_gen)
            regs = kernel_regularisers(model.kernel(), model.unnormalised(), cfg.reg)
            loss = loss_dm + sum(regs.values())
            check("distribution-matching loss", loss_dm)
            opt_k.zero_grad(set_to_none=True)
            loss.backward()
            opt_k.step()
            with torch.no_grad():
                rate = cfg.kernel_ema if cfg.kernel_ema > 0 else 1.0
                ema_kernel.lerp_(model.kernel(), rate)
            step += 1
            for name, value in {"loss/aux": loss_aux, "loss/dm": loss_dm,
                                **{f"loss/reg_{k}": v for k, v in regs.items()}}.items():
                window.setdefault(name, []).append(value.item())
            images = step * cfg.batch_size
            if crossed(cfg.log_every) or step == total_steps:
                logged = {k: sum(v) / len(v) for k, v in window.items()}
                window = {}
                if true_kernel is not None:
                    err = kernel_errors(ema_kernel.cpu(), true_kernel.cpu())
                    logged |= {"kernel/ncc": err.ncc, "kernel/mae": err.mae}
                tracker.log_metrics(logged, step=images)
                bar.update(step, " ".join(f"{k.split('/')[-1]} {v:.3g}" for k, v in logged.items()
                                          if k in ("loss/dm", "kernel/ncc")))
            if on_kernel is not None and (crossed(cfg.plot_every) or step == total_steps):
                on_kernel(ema_kernel.detach().cpu(), images)
            if crossed(cfg.checkpoint_every) or step == total_steps:
                save()
    return KernelLearnResult(kernel=ema_kernel.detach().cpu(), steps=step, images=step * cfg.batch_size,
                             seconds=time.perf_counter() - t0,
                             losses={k: v for k, v in logged.items() if not math.isnan(v)})
