"""Alternating updates of DDM4IP step 2, for any learnable forward model.

Each step (a) trains the auxiliary flow v_aux on simulated observations
y = A_phi(x) + sigma n from clean crops x (phi frozen), then (b) updates phi with the
distribution-matching loss against the frozen prior v_pre of the real degraded data.
Crops carry their field positions when the prior or the model needs them (PSF grids).
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
from ddmops.ddm4ip.models import LearnableOperator
from ddmops.device import autocast, compiled
from ddmops.ddm4ip.objective import distribution_matching_loss, kernel_regularisers
from ddmops.ddm4ip.spectral import SpectralTarget
from ddmops.flow.loss import flow_matching_loss, heldout_loss
from ddmops.flow.prior import FlowPrior
from ddmops.loop import schedule
from ddmops.loop.checkpoint import Resumable
from ddmops.loop.guard import NanGuard
from ddmops.loop.meters import WindowMeans
from ddmops.loop.progress import progress_bar
from ddmops.loop.schedule import lr_factor, set_lr
from ddmops.metrics import kernel_errors
from ddmops.tracker import Tracker


@dataclass(frozen=True)
class OperatorLearnResult:
    kernels: torch.Tensor  # (N, K, K) the PSFs (moving average if enabled), N = 1 but for grids
    steps: int
    images: int
    seconds: float
    losses: dict[str, float]  # last logged values


def stack_errors(est: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Mean kernel NCC / MAE over matching PSF stacks (N, K1, K1), (N, K2, K2)."""
    errs = [kernel_errors(e, t) for e, t in zip(est, true)]
    return {"kernel/ncc": sum(e.ncc for e in errs) / len(errs), "kernel/mae": sum(e.mae for e in errs) / len(errs)}


def learn_operator(cfg: LearnOperatorConfig, model: LearnableOperator, clean: PatchSampler,
                   degraded_prior: FlowPrior, *, sigma: float, device: torch.device, tracker: Tracker,
                   checkpoint: Path, run_key: str, truth: torch.Tensor | None = None,
                   align: Callable[[torch.Tensor], torch.Tensor] = lambda k: k,
                   on_kernels: Callable[[torch.Tensor, int], None] | None = None,
                   heldout: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                   spectral: SpectralTarget | None = None,
                   progress: bool = True, nan_policy: str = "stop") -> OperatorLearnResult:
    """Learn ``model``'s parameters. ``clean`` samples crops of model.crop_size(P) for the
    prior's patch size P; ``truth`` (N, K, K), when known, only feeds the logged error curves,
    against ``align`` of the model's PSFs (the estimate at the truth's PSF positions). With
    ``cfg.images`` 0 there is no pass: the model's start is scored once and returned.

    ``heldout``: real observation crops (M, C, P, P) the prior was not trained on, with their
    positions (M, 2, P, P) or None; each log step then records ``score/observation_gap``, a
    score needing no truth: the relative gap between v_pre's flow-matching loss on simulated
    observations (fixed crops and noise) and on these real ones (0 when they look alike).

    ``spectral``: the sets' second-order statistics, for the regulariser ``reg.spectral``."""
    data_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    model, clean = model.to(device), clean.to(device)
    v_pre = degraded_prior.to(device)
    with_pos = v_pre.arch.position_channels or model.needs_position
    aux = copy.deepcopy(v_pre.net).train().requires_grad_(True)
    opt_k = torch.optim.Adam(model.parameters(), lr=cfg.lr_kernel, betas=cfg.betas, fused=True)
    opt_aux = torch.optim.Adam(aux.parameters(), lr=cfg.lr_aux, betas=cfg.betas, fused=True)
    aux_net = compiled(aux, cfg.compile, "operator learning (auxiliary flow)")
    pre_net = compiled(v_pre.net, cfg.compile, "operator learning (observation prior)")
    ema = model.kernels().detach().clone()
    total_steps = max(1, cfg.images // cfg.batch_size) if cfg.images else 0  # 0: keep the start
    saved = Resumable(checkpoint, run_key, model=model, aux=aux, opt_kernel=opt_k, opt_aux=opt_aux,
                      ema_kernels=ema, data_gen=data_gen, noise_gen=noise_gen)
    step = saved.resume(device)

    def simulate(n: int = cfg.batch_size, crops: torch.Generator = data_gen,
                 noise: torch.Generator = noise_gen) -> tuple[torch.Tensor, dict]:
        """``n`` observations y = A_phi(x) + sigma n and the prior's extra inputs."""
        if with_pos:
            x, pos = clean.sample_with_position(n, crops)
            pos = pos.to(device)
        else:
            x, pos = clean.sample(n, crops), None
        y = model(x.to(device), pos)
        y = y + sigma * torch.randn(y.shape, generator=noise, device=noise.device).to(y)
        if not v_pre.arch.position_channels:
            return y, {}
        r = (pos.shape[-1] - y.shape[-1]) // 2  # the observation sees the centre of its crop
        return y, {"position": pos[..., r:r + y.shape[-2], r:r + y.shape[-1]]}

    real_loss = heldout_loss(v_pre.net, *heldout) if heldout is not None else 0.0

    @torch.no_grad()
    def observation_gap() -> float:
        g = torch.Generator().manual_seed(cfg.seed + 2)  # the same crops and noise every time
        y, kw = simulate(len(heldout[0]), g, g)
        pos = kw["position"].cpu() if "position" in kw else None
        return abs(heldout_loss(v_pre.net, y.cpu(), pos) - real_loss) / real_loss

    def crossed(every: int) -> bool:
        return schedule.crossed(step, cfg.batch_size, every)

    def log(images: int) -> dict[str, float]:
        """The window's mean losses, the kernel's errors (given a truth), the observation gap."""
        means, _, _ = window.read()
        logged = means | {"train/skipped_batches": guard.skipped}
        if truth is not None:
            logged |= stack_errors(align(ema.cpu()), truth.cpu())
        if heldout is not None:
            logged["score/observation_gap"] = observation_gap()
        tracker.log_metrics(logged, step=images)
        return logged

    guard = NanGuard(nan_policy, checkpoint)
    t0, logged = time.perf_counter(), {}
    window = WindowMeans()
    with progress_bar(f"learn {model.family}", total_steps, step, progress) as bar:
        while step < total_steps:
            scale = lr_factor(cfg.lr_decay, step, total_steps)
            set_lr(opt_k, cfg.lr_kernel * scale)
            set_lr(opt_aux, cfg.lr_aux * scale)
            # (a) auxiliary flow on simulated observations, operator frozen
            with torch.no_grad():
                y, kw = simulate()
            with autocast(device, cfg.precision):
                loss_aux = flow_matching_loss(aux_net, y, noise_gen, **kw)
            opt_aux.zero_grad(set_to_none=True)
            loss_aux.backward()
            opt_aux.found_inf = (~guard.ok(step, {"auxiliary flow-matching loss": loss_aux})).float()
            opt_aux.step()  # skipped on the device when the loss is not finite
            # (b) operator update through y = A_phi(x) + sigma n
            y, kw = simulate()
            pos = kw.get("position")
            with autocast(device, cfg.precision):
                loss_dm = distribution_matching_loss(y, lambda z, t: aux_net(z, t, position=pos),
                                                     lambda z, t: pre_net(z, t, position=pos), noise_gen)
            regs = kernel_regularisers(model.kernels(), model.unnormalised(), cfg.reg, spectral)
            opt_k.zero_grad(set_to_none=True)
            (loss_dm + sum(regs.values())).backward()
            ok = guard.ok(step, {"distribution-matching loss": loss_dm, **{f"{k} regulariser": v for k, v in regs.items()}})
            opt_k.found_inf = (~ok).float()
            opt_k.step()
            with torch.no_grad():
                ema.lerp_(model.kernels(), ok.float() * (cfg.kernel_ema if cfg.kernel_ema > 0 else 1.0))
            step += 1
            window.add({"loss/aux": loss_aux, "loss/dm": loss_dm, **{f"loss/reg_{k}": v for k, v in regs.items()}})
            images = step * cfg.batch_size
            if crossed(cfg.log_every) or step == total_steps:
                guard.check()
                logged = log(images)
                bar.update(step, " ".join(f"{k.split('/')[-1]} {v:.3g}" for k, v in logged.items()
                                          if k in ("loss/dm", "kernel/ncc")))
            if on_kernels is not None and (crossed(cfg.plot_every) or step == total_steps):
                on_kernels(ema.detach().cpu(), images)
            if crossed(cfg.checkpoint_every) or step == total_steps:
                guard.check()  # never save past a non-finite step
                saved.save(step)
        if total_steps == 0:  # no pass: the start is the result, scored once
            logged = log(0)
            if on_kernels is not None:
                on_kernels(ema.detach().cpu(), 0)
    return OperatorLearnResult(kernels=ema.detach().cpu(), steps=step, images=step * cfg.batch_size,
                               seconds=time.perf_counter() - t0,
                               losses={k: v for k, v in logged.items() if not math.isnan(v)})
