"""DDM4IP operator recovery on real photos: per case, the learned operator against the truth
and restoration with it against the true operator, the input and classical baselines, in one run.

Clean set: BSDS500 train tiles; degraded set: BSDS500 test tiles (other photos: unpaired),
blurred by each kernel of ../shared/data/kernels/kernels_12.npy (`deblur`), by the lens
PSF field (`psf_grid`) and by a DIV2KRK-style x2 kernel (`sr_kernel`); restoration on
held-out BSDS500 test crops. Every stage is the pipeline's own stage function, with the
lengths of the chosen params file (default: the CPU profile). Per case and step-3 method
(pnp, the default; pnp-bm3d; diffpir): PSNR with the learned and with the true operator; the
classical baselines where they apply (uniform blur: Wiener at the best balance of a grid,
unsupervised Wiener, Richardson-Lucy at the best of 10/30/100 iterations, each with the learned
and the true kernel; SR: bicubic, which is the input row); seconds per stage.

    python benchmarks/operator_recovery.py [--params params.yaml] [--kernels 0 4 8] \\
        [--tasks deblur psf_grid sr_kernel] [--methods pnp pnp-bm3d diffpir] [--crops 8] \\
        [--workdir .bench/operator_recovery] [-S key=value ...]

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
from ddmops.config import DeblurSpec, Paths, load_params  # noqa: E402
from ddmops.data import (held_out_crops, load_image_set, save_image_set, source_images, tiles,  # noqa: E402
                         to_tensor)
from ddmops.device import pick_device  # noqa: E402
from ddmops.inversion import classical  # noqa: E402
from ddmops.io import save_npz, write_json  # noqa: E402
from ddmops.metrics import best_translation, fourier_shift, psnr  # noqa: E402
from ddmops.operators.psf_operator import PsfOperator  # noqa: E402
from ddmops.ops.hashing import config_digest  # noqa: E402
from ddmops.ops.workspace import Workspace  # noqa: E402
from ddmops.strict import to_dict  # noqa: E402
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


def support_size(kernel: np.ndarray, margin: int = 2, floor: float = 0.01) -> int:
    """The odd side of the centred square holding every entry above ``floor`` x the peak, plus a margin."""
    rows, cols = np.nonzero(kernel > floor * kernel.max())
    c = (np.array(kernel.shape) - 1) / 2
    half = max(np.abs(rows - c[0]).max(), np.abs(cols - c[1]).max())
    return int(min(kernel.shape[0], 2 * (np.ceil(half) + margin) + 1))


def window_psnr(x_hat: torch.Tensor, truth: torch.Tensor, k_hat: int, k: int, shift: tuple[int, int] = (0, 0)) -> float:
    """PSNR on the observation's window: x_hat (a restoration from a kernel of side k_hat, which
    moves the picture by ``shift``: evaluate.registration) and the truth (observed through one of
    side k) cropped to the centre both cover."""
    a, b = (k_hat - 1) // 2, (k - 1) // 2
    (dr, dc), h, w = shift, x_hat.shape[-2] - 2 * a, x_hat.shape[-1] - 2 * a
    xh = x_hat[..., a:a + h, a:a + w]
    xt = truth[..., b - dr:b - dr + h, b - dc:b - dc + w]
    return psnr(xh.clamp(-1, 1), xt).mean().item()


def classical_rows(ws: Workspace, task: str, learned: PsfOperator, truth_op: PsfOperator) -> dict[str, float]:
    """Best-tuned classical deblurring with the learned and the true kernel (uniform blur only)."""
    y = torch.stack(load_image_set(ws.observed(task, "test")))
    x = torch.stack(load_image_set(ws.prepared("test")))
    out = {}
    for name, op in (("learned", learned), ("true", truth_op)):
        k, side, true_side = op.psfs()[0], op.kernel_size, truth_op.kernel_size
        shift = evaluate.registration(op, truth_op)

        def score(x_hat):
            if name == "learned":  # as in evaluate: the translation refined below a pixel
                x_hat = fourier_shift(x_hat, best_translation(x_hat, lambda m: window_psnr(m, x, side, true_side, shift)))
            return window_psnr(x_hat, x, side, true_side, shift)
        out[f"wiener/{name}"] = max(score(classical.wiener(y, k, b)) for b in (0.003, 0.01, 0.03, 0.1))
        out[f"unsupervised wiener/{name}"] = score(classical.unsupervised_wiener(y, k))
        out[f"richardson-lucy/{name}"] = max(score(classical.richardson_lucy(y, k, n)) for n in (10, 30, 100))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--tasks", nargs="+", default=["deblur", "psf_grid", "sr_kernel"])
    ap.add_argument("--kernels", nargs="+", type=int, default=[0, 4, 8])
    ap.add_argument("--methods", nargs="+", default=["pnp", "pnp-bm3d", "diffpir"])
    ap.add_argument("--crops", type=int, default=8, help="held-out 64 px test crops")
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
                       run_key=config_digest("clean", to_dict(params.train_prior.clean), args.max_side, args.crops))
    prepare_bsds(ws, params.prepare.tile_size, args.max_side, 20, args.crops, params.prepare.test_size)
    t0 = time.perf_counter()
    train_prior.run(params.train_prior.clean, ctx, "clean")
    clean_seconds = time.perf_counter() - t0

    cases = [("deblur", i) for i in args.kernels] if "deblur" in args.tasks else []
    cases += [(t, None) for t in ("psf_grid", "sr_kernel") if t in args.tasks]
    kernel_file = str(SHARED_DATA / "kernels" / "kernels_12.npy")
    rows, goals = [], {"above input + 1": 0, "within 1 dB of true": 0, "true above classical + 0.5": 0,
                       "no method below input": 0}
    for task, index in cases:
        deg = params.degrade
        learn = getattr(params.learn_operator, task)
        if index is not None:  # 25 x 25 files holding smaller kernels: learn at the support (+ margin)
            deg = dataclasses.replace(deg, deblur=DeblurSpec(kind="file", size=25, path=kernel_file, index=index))
            learn = dataclasses.replace(learn, kernel_size=support_size(np.load(kernel_file)[index]))
        # checkpoints resume only within a case: the run keys name the case and the configs each stage reads
        prior_cfg = getattr(params.train_prior, task)
        observed = config_digest(task, index, to_dict(deg), to_dict(prior_cfg), args.crops)
        seconds = {}
        t0 = time.perf_counter()
        ctx = dataclasses.replace(ctx, run_key=observed)
        degrade.run(deg, ctx, task)
        train_prior.run(prior_cfg, ctx, task)
        seconds["observation prior"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ctx = dataclasses.replace(ctx, run_key=config_digest(observed, to_dict(learn)))
        learn_operator.run(learn, ctx, task)
        seconds["learning"] = time.perf_counter() - t0
        inv = getattr(params.invert, task)
        per_method, m = {}, {}
        for method in args.methods:
            t0 = time.perf_counter()
            cfg = dataclasses.replace(inv, method=method)
            ctx = dataclasses.replace(ctx, run_key=config_digest(ctx.run_key, to_dict(cfg)))
            invert.run(cfg, ctx, task)
            ev = evaluate.run(params.evaluate, ctx, task)
            per_method[method] = (ev["psnr/restored"], ev["psnr/oracle"])
            seconds[f"invert {method}"] = time.perf_counter() - t0
            m = m or ev
        name = f"{task}[{index}] K={learn.kernel_size}" if index is not None else task
        base = classical_rows(ws, task, PsfOperator.load(ws.operator(task)), PsfOperator.load(
            ws.observed(task, "truth"))) if task == "deblur" else {}
        best_true_classical = max([v for k, v in base.items() if k.endswith("/true")], default=m["psnr/input"])
        default_learned, default_true = per_method[args.methods[0]]
        row = [name, m["kernel/ncc"], m["psnr/input"], *[v for pair in per_method.values() for v in pair],
               best_true_classical, max([v for k, v in base.items() if k.endswith("/learned")], default=m["psnr/input"]),
               seconds["learning"], sum(seconds.values())]
        rows.append(row)
        parts = [f"ncc {m['kernel/ncc']:.3f}", f"input {m['psnr/input']:.2f}"]
        parts += [f"{meth} learned/true {a:.2f}/{b:.2f}" for meth, (a, b) in per_method.items()]
        parts += [f"{k} {v:.2f}" for k, v in base.items()] + [f"{k} {v:.0f} s" for k, v in seconds.items()]
        print(f"case {name}: " + ", ".join(parts), flush=True)  # a long run's partial results survive a stop
        goals["above input + 1"] += default_learned >= m["psnr/input"] + 1
        goals["within 1 dB of true"] += default_learned >= default_true - 1
        goals["true above classical + 0.5"] += default_true >= best_true_classical + 0.5
        goals["no method below input"] += all(a >= m["psnr/input"] for a, _ in per_method.values())
    columns = ["case", "kernel NCC", "PSNR input", *[f"{meth} {w}" for meth in args.methods for w in ("learned", "true")],
               "best classical true", "best classical learned", "learn s", "case s"]
    print_table(f"Operator recovery on BSDS500 ({device}; params {Path(args.params).name}; {args.crops} test crops; "
                f"clean prior {clean_seconds:.0f} s)", columns, rows,
                f"operator_recovery ({args.methods[0]}): " + ", ".join(f"{k} {v}/{len(rows)}" for k, v in goals.items()),
                width=200)


if __name__ == "__main__":
    main()
