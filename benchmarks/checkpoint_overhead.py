"""Checkpoint cost per long stage: write time, size, and the share of the stage's time spent
writing checkpoints at the params file's `checkpoint_every` (goal: < 2 %).

Each stage runs a few steps with its params (model, batch) on random images, writing a
checkpoint after every step; the writes are timed apart from the steps, so both figures
come from the same run. The full stage's time is extrapolated from the step time:

    overhead = n_checkpoints * write_s / (n_steps * step_s + n_checkpoints * write_s)

    python benchmarks/checkpoint_overhead.py [--params params.yaml] [--steps 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, print_table  # noqa: E402
from ddmops import io  # noqa: E402
from ddmops.config import DDM4IP_TASKS, DOMAINS, load_params  # noqa: E402
from ddmops.data import PatchSampler  # noqa: E402
from ddmops.ddm4ip import learner  # noqa: E402
from ddmops.ddm4ip.models import build_model  # noqa: E402
from ddmops.device import pick_device  # noqa: E402
from ddmops.flow import train  # noqa: E402
from ddmops.tracker import NullTracker  # noqa: E402


class TimedWrites:
    """Stands in for ``save_checkpoint`` in the training modules, timing each write."""

    def __init__(self):
        self.seconds: list[float] = []
        self.bytes = 0

    def __call__(self, path: Path, state: dict) -> None:
        t0 = time.perf_counter()
        io.save_checkpoint(path, state)
        self.seconds.append(time.perf_counter() - t0)
        self.bytes = path.stat().st_size

    def install(self) -> None:
        train.save_checkpoint = learner.save_checkpoint = self


def images(n: int, side: int, g: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """n random (3, side, side) images and their geometry, each a whole photo."""
    geometry = torch.tensor([[0.0, 0.0, side, side]] * n, dtype=torch.float64)
    return [torch.rand(3, side, side, generator=g) * 2 - 1 for _ in range(n)], geometry


def measure(run, steps: int, full_steps: int, full_checkpoints: int, tmp: Path) -> list:
    writes = TimedWrites()
    writes.install()
    t0 = time.perf_counter()
    run(tmp / "ckpt.pt")
    total = time.perf_counter() - t0
    write_s = sum(writes.seconds[1:]) / max(1, len(writes.seconds) - 1)  # the first one warms up
    step_s = (total - sum(writes.seconds)) / steps
    stage_s = full_steps * step_s + full_checkpoints * write_s
    return [f"{write_s * 1e3:.1f}", f"{writes.bytes / 2**20:.2f}", full_checkpoints, f"{stage_s / 60:.1f}",
            100 * full_checkpoints * write_s / stage_s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    params, device, g = load_params(args.params), pick_device(), torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        priors = {}
        for domain in DOMAINS:
            cfg = getattr(params.train_prior, domain)
            short = dataclasses.replace(cfg, images=args.steps * cfg.batch_size, checkpoint_every=1,
                                        sample_every=10**9, log_every=10**9, eval_patches=cfg.batch_size)
            imgs, geometry = images(8, 4 * cfg.patch_size, g)
            sampler = PatchSampler(imgs, cfg.patch_size, flips=True, geometry=geometry)
            val = torch.zeros(cfg.batch_size, 3, cfg.patch_size, cfg.patch_size)
            pos = torch.zeros(cfg.batch_size, 2, cfg.patch_size, cfg.patch_size) if cfg.model.position_channels else None

            def run(path, short=short, sampler=sampler, val=val, pos=pos, domain=domain):
                priors[domain] = train.train_prior(short, sampler, val, img_channels=3, device=device,
                                                   tracker=NullTracker(), checkpoint=path, run_key=domain,
                                                   meta={"patch_size": short.patch_size}, progress=False,
                                                   val_positions=pos)[0]
            per_step = cfg.batch_size * cfg.accumulation
            rows.append([f"train-prior@{domain}", *measure(run, args.steps, cfg.images // per_step,
                                                           -(-cfg.images // cfg.checkpoint_every), tmp / f"prior-{domain}")])
        for task in DDM4IP_TASKS:
            cfg = getattr(params.learn_operator, task)
            short = dataclasses.replace(cfg, images=args.steps * cfg.batch_size, checkpoint_every=1,
                                        log_every=10**9, plot_every=10**9)
            model = build_model(task, cfg, torch.Generator().manual_seed(0))
            patch = int(priors[task].meta["patch_size"])
            imgs, geometry = images(8, 4 * model.crop_size(patch), g)
            sampler = PatchSampler(imgs, model.crop_size(patch), flips=True, geometry=geometry)

            def run(path, short=short, model=model, sampler=sampler, task=task):
                learner.learn_operator(short, model, sampler, priors[task], sigma=0.01, device=device,
                                       tracker=NullTracker(), checkpoint=path, run_key=task, progress=False)
            rows.append([f"learn-operator@{task}", *measure(run, args.steps, max(1, cfg.images // cfg.batch_size),
                                                            -(-cfg.images // cfg.checkpoint_every), tmp / f"operator-{task}")])
    worst = max(rows, key=lambda r: r[-1])
    print_table(f"Checkpoint cost at {args.params.name}'s checkpoint_every ({device})",
                ["stage", "write ms", "size MiB", "checkpoints", "stage min (est.)", "overhead %"], rows,
                f"summary: checkpointing costs at most {worst[-1]:.2f} % of a stage ({worst[0]}); goal < 2 %: "
                f"{'met' if worst[-1] < 2 else 'missed'}")


if __name__ == "__main__":
    main()
