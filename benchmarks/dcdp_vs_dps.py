"""DCDP (ODE and Tweedie purification) against DPS, task by task, on one prior, in one run.

Each task's problem (operator, measurement noise) comes from params.yaml's `restore`
section, so the figures match `dvc repro`; images are held out from prior training
(BSDS500 test crops when ../shared/data exists, else the workspace's test images).

    python benchmarks/dcdp_vs_dps.py [--params params.yaml] [--tasks gaussian_deblur ...]
        [--images DIR] [--count 4] [--size 64] [--dps-steps 1000] [--prior FILE] [-S key=value ...]

e.g. box inpainting instead of the default random pixels:
``--tasks inpainting -S restore.inpainting.operator.mask=box``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SHARED_DATA, print_table  # noqa: E402
from benchmarks.prior_denoise import held_out  # noqa: E402
from ddmops.config import TASKS, load_params  # noqa: E402
from ddmops.device import pick_device  # noqa: E402
from ddmops.flow.prior import FlowPrior  # noqa: E402
from ddmops.tasks import make_problem  # noqa: E402
from ddmops.ops.workspace import Workspace  # noqa: E402
from pipelines.context import StageContext  # noqa: E402
from pipelines.restore import job, restore  # noqa: E402

GOAL_TASKS = ("gaussian_deblur", "motion_deblur", "superres", "inpainting")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--prior", default="")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    default_images = SHARED_DATA / "bsds500" / "test"
    ap.add_argument("--images", default=str(default_images) if default_images.is_dir() else "")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--dps-steps", type=int, default=0,
                    help="DPS sampler steps (0: the params file's; DPS's paper uses 1000)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                    help="params override key=value (or @file), as `ddmops run -S`")
    args = ap.parse_args()

    params_file = Path(args.params).resolve()
    params = load_params(params_file, args.overrides)
    ws = Workspace(params_file.parent, params.paths)
    ctx = StageContext(ws=ws, device=pick_device(), progress=False)
    prior = FlowPrior.load(Path(args.prior) if args.prior else ws.prior("clean"), ctx.device)
    x, where = held_out(args.images, args.count, args.size, prior.arch.img_channels)
    rows, verdicts = [], []
    for task in args.tasks:
        cfg = dataclasses.replace(job(params.restore, task), images=len(x))
        if args.dps_steps:
            t = cfg.task
            cfg = dataclasses.replace(cfg, task=dataclasses.replace(t, dps=dataclasses.replace(t.dps,
                                                                                        steps=args.dps_steps)))
        p = make_problem(cfg.task, x, ws.root, cfg.seed)
        r = restore(["dcdp-ode", "dcdp-tweedie", "dps"], cfg, ctx, prior, p)
        for name, m in r.items():
            rows.append([task, name, m["psnr"].mean().item(), m["ssim"].mean().item(), f"{m['nfe']:.0f}",
                         m["seconds"], m["seconds"] / r["dps"]["seconds"]])
        ode, tw, dps = r["dcdp-ode"], r["dcdp-tweedie"], r["dps"]
        if task in GOAL_TASKS:
            ok_ode = ode["psnr"].mean() >= dps["psnr"].mean() and ode["seconds"] <= dps["seconds"] / 5
            ok_tw = (tw["psnr"].mean() >= ode["psnr"].mean() - 0.5) and tw["seconds"] <= dps["seconds"] / 50
            verdicts.append(f"{task}: ode {'met' if ok_ode else 'missed'}, tweedie {'met' if ok_tw else 'missed'}")
    print_table(f"DCDP vs DPS on {len(x)} held-out {x.shape[-1]}px images from {where} ({ctx.device})",
                ["task", "method", "PSNR", "SSIM", "NFE", "s/image", "time / DPS"], rows,
                "dcdp_vs_dps goals (ode: PSNR >= DPS at <= 1/5 time; tweedie: within 0.5 dB of ode at "
                "<= 1/50 DPS time): " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
