"""DDM4IP operator recovery on real photos: per case, the learned operator against the truth
and restoration with it against restoration with the true operator, in one run.

Clean set: BSDS500 train tiles; degraded set: BSDS500 test tiles (other photos: unpaired),
blurred by each kernel of ../shared/data/kernels/kernels_12.npy (`deblur`), by the lens
PSF field (`psf_grid`) and by a DIV2KRK-style x2 kernel (`sr_kernel`); restoration on
held-out BSDS500 test crops. Every stage is the pipeline's own stage function, with the
lengths of the chosen params file (default: the CPU profile).

    python benchmarks/operator_recovery.py [--params params.yaml] [--kernels 0 4 8] \\
        [--tasks deblur psf_grid sr_kernel] [--workdir .bench/operator_recovery] [-S key=value ...]

Checkpoints are kept per case under the work directory: a rerun resumes, and a rerun with
other learn_operator/invert values (``-S``) reuses the case's degraded prior (and, when only
invert values change, its learned operator).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SHARED_DATA, print_table  # noqa: E402
from ddmops.config import KernelSpec, Paths, load_params  # noqa: E402
from ddmops.data import held_out_crops, save_image_set, source_images, tiles, to_tensor  # noqa: E402
from ddmops.device import pick_device  # noqa: E402
from ddmops.ops.hashing import config_digest  # noqa: E402
from ddmops.io import save_npz, write_json  # noqa: E402
from ddmops.strict import to_dict  # noqa: E402
from ddmops.ops.workspace import Workspace  # noqa: E402
from pipelines import degrade, evaluate, invert, learn_operator, train_prior  # noqa: E402
from pipelines.context import StageContext  # noqa: E402


def prepare_bsds(ws: Workspace, tile: int, max_side: int, test_photos: int, crops: int, size: int) -> None:
    """clean = BSDS train tiles; to-degrade = BSDS test tiles; test = crops of other test photos."""
    def photos(split):
        return [to_tensor(a) for _, a in source_images(str(SHARED_DATA / "bsds500" / split), 3, max_side)]
    train, test = photos("train"), photos("test")
    sets = {"clean": [t for x in train for t in tiles(x, tile)],
            "to_degrade": [t for x in test[test_photos:] for t in tiles(x, tile)],
            "test": held_out_crops(test[:test_photos], crops, size, torch.Generator().manual_seed(0))}
    for name, items in sets.items():
        geometry = torch.tensor([p[1] for p in items], dtype=torch.float64)
        save_npz(ws.prepared(name), save_image_set([p[0] for p in items], True, geometry))
    write_json(ws.prepared("meta"), {"channels": 3, "source": "bsds500", "split": "tiles"})


COLUMNS = ["kernel NCC", "NCC of a delta", "kernel MAE", "PSNR learned", "PSNR true op", "PSNR input", "learn s",
           "case s"]


def support_size(kernel: np.ndarray, margin: int = 2, floor: float = 0.01) -> int:
    """The odd side of the centred square holding every entry above ``floor`` x the peak, plus a margin."""
    rows, cols = np.nonzero(kernel > floor * kernel.max())
    c = (np.array(kernel.shape) - 1) / 2
    half = max(np.abs(rows - c[0]).max(), np.abs(cols - c[1]).max())
    return int(min(kernel.shape[0], 2 * (np.ceil(half) + margin) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--tasks", nargs="+", default=["deblur", "psf_grid", "sr_kernel"])
    ap.add_argument("--kernels", nargs="+", type=int, default=list(range(12)))
    ap.add_argument("--workdir", default=str(ROOT / ".bench" / "operator_recovery"))
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                    help="params override key=value (or @file), as `ddmops run -S`")
    args = ap.parse_args()
    if not (SHARED_DATA / "bsds500").is_dir():
        sys.exit(f"needs BSDS500 and the kernels under {SHARED_DATA}")

    params = load_params(Path(args.params), args.overrides)
    root = Path(args.workdir).resolve()
    ws = Workspace(root, Paths())
    device = pick_device()
    ctx = StageContext(ws=ws, device=device, progress=False,
                       run_key=config_digest("clean", to_dict(params.train_prior.clean), args.max_side))
    prepare_bsds(ws, params.prepare.tile_size, args.max_side, 20, params.prepare.test_crops,
                 params.prepare.test_size)
    t0 = time.perf_counter()
    train_prior.run(params.train_prior.clean, ctx, "clean")
    clean_seconds = time.perf_counter() - t0

    cases = [("deblur", i) for i in args.kernels] if "deblur" in args.tasks else []
    cases += [(t, None) for t in ("psf_grid", "sr_kernel") if t in args.tasks]
    kernel_file = str(SHARED_DATA / "kernels" / "kernels_12.npy")
    rows, ncc_ok, gap_ok = [], [], []
    for task, index in cases:
        deg = params.degrade
        learn = getattr(params.learn_operator, task)
        if index is not None:  # 25 x 25 files holding smaller kernels: learn at the support (+ margin)
            deg = dataclasses.replace(deg, deblur=KernelSpec(kind="file", size=25, path=kernel_file, index=index))
            learn = dataclasses.replace(learn, kernel_size=support_size(np.load(kernel_file)[index]))
        # checkpoints resume only within a case: the run keys name the case and the configs each stage reads
        prior_cfg = getattr(params.train_prior, task)
        observed = config_digest(task, index, to_dict(deg), to_dict(prior_cfg))
        t0 = time.perf_counter()
        ctx = dataclasses.replace(ctx, run_key=observed)
        degrade.run(deg, ctx, task)
        train_prior.run(prior_cfg, ctx, task)
        ctx = dataclasses.replace(ctx, run_key=config_digest(observed, to_dict(learn)))
        learned = learn_operator.run(learn, ctx, task)
        inv = getattr(params.invert, task)
        ctx = dataclasses.replace(ctx, run_key=config_digest(ctx.run_key, to_dict(inv)))
        invert.run(inv, ctx, task)
        m = evaluate.run(params.evaluate, ctx, task)
        seconds = time.perf_counter() - t0
        name = f"{task}[{index}] K={learn.kernel_size}" if index is not None else task
        rows.append([name, m["kernel/ncc"], m["kernel/ncc_delta"], m["kernel/mae"], m["psnr/restored"],
                     m["psnr/oracle"], m["psnr/input"], learned["train/seconds"], seconds])
        print(f"case {name}: " + ", ".join(f"{c} {v:.3f}" if isinstance(v, float) else f"{c} {v}" for c, v in zip(
            COLUMNS, rows[-1][1:], strict=True)), flush=True)  # a long run's partial results survive a stop
        ncc_ok.append(m["kernel/ncc"] >= 0.9)
        gap_ok.append(m["psnr/restored"] >= m["psnr/oracle"] - 1.0)
    print_table(f"Operator recovery on BSDS500 ({ctx.device}; params {args.params}; clean prior "
                f"{clean_seconds:.0f} s)",
                ["case", *COLUMNS], rows,
                f"operator_recovery: NCC >= 0.9 on {sum(ncc_ok)}/{len(rows)} cases, learned-operator PSNR "
                f"within 1 dB of the oracle on {sum(gap_ok)}/{len(rows)} (goals: all, with the GPU profile)")


if __name__ == "__main__":
    main()
