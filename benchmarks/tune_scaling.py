"""Tuning throughput: trials/hour with 1 and 2 worker processes on one storage, the pruned
fraction, and how well the unsupervised score ranks trials like PSNR does (Spearman).

Both studies run the same task, budget and sampler seed in one run, on a fresh workspace
with the test suite's shrunk data and priors (trained first, outside the timing) but DCDP
at its default length (10 outer iterations, 10 ODE steps), so trials take seconds, not
milliseconds. The wall time includes starting the worker processes.

    python benchmarks/tune_scaling.py [--task superres] [--trials 16] [--ddm4ip-trials 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import print_table  # noqa: E402
from ddmops.config import DDM4IP_TASKS, TASKS, load_params  # noqa: E402
from ddmops.ops.environment import quiet_environment  # noqa: E402
from pipelines.runner import run_stage  # noqa: E402
from pipelines.tune import tune  # noqa: E402
from pipelines.tune_options import TuneOptions, normalise_task  # noqa: E402
from tests.conftest import write_workspace  # noqa: E402


def workspace(folder: Path, tasks: list[str], images: int, learn_images: int) -> Path:
    lengths = [f"restore.{t}.dcdp.{k}=10" for t in TASKS for k in ("iterations", "ode_steps")]
    lengths += [f"learn_operator.{t}.images={learn_images}" for t in DDM4IP_TASKS]
    root = write_workspace(folder, [f"restore.images={images}", "restore.batch_size=1", *lengths]).parent
    params = load_params(root / "params.yaml")
    run_stage("prepare", params, root, progress=False)
    run_stage("train-prior", params, root, item="clean", progress=False)
    for t in tasks:
        run_stage("degrade", params, root, item=t, progress=False)
        run_stage("train-prior", params, root, item=t, progress=False)
    return root


def study(root: Path, **kw) -> tuple[dict, float]:
    params = load_params(root / "params.yaml")
    t0 = time.perf_counter()
    result = tune(params, root, TuneOptions(device="cpu", **kw), root / "params.yaml", [])
    seconds = time.perf_counter() - t0
    states = [t.state.name for t in result.study.get_trials()]
    return {"trials": len(states), "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"), "seconds": seconds, "per_hour": 3600 * len(states) / seconds}, \
        result.correlation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="superres", help="the task of the scaling comparison")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--images", type=int, default=4, help="test images per DCDP trial (pruning steps)")
    ap.add_argument("--ddm4ip-trials", type=int, default=12, help="deblur trials for the correlation (0: skip)")
    ap.add_argument("--learn-images", type=int, default=1024, help="learn-operator length in the deblur trials")
    args = ap.parse_args()
    quiet_environment()
    task = normalise_task(args.task)
    extra = ["deblur"] if args.ddm4ip_trials else []
    with tempfile.TemporaryDirectory() as tmp:
        root = workspace(Path(tmp) / "ws", sorted({*extra, *([task] if task in DDM4IP_TASKS else [])}), args.images,
                         args.learn_images)
        rows, corr = [], {}
        for workers in (1, 2):
            r, c = study(root, task=task, study=f"scale-{workers}", n_trials=args.trials, workers=workers,
                         startup_trials=4)
            corr[f"{task} ({workers} worker{'s' * (workers > 1)})"] = c
            rows.append([workers, r["trials"], r["complete"], r["pruned"], r["failed"], r["seconds"], r["per_hour"],
                         r["pruned"] / r["trials"]])
        if args.ddm4ip_trials:
            _, corr["deblur (DDM4IP, no pruning)"] = study(root, task="deblur", study="corr-deblur", pruner="none",
                                                          n_trials=args.ddm4ip_trials)
    print_table(f"ddmops tune --task {args.task}: {args.trials} trials, CPU",
                ["workers", "trials", "complete", "pruned", "failed", "seconds", "trials/hour", "pruned fraction"],
                rows, "")
    print_table("unsupervised score vs PSNR over complete trials (Spearman; -1: lower score = higher PSNR)",
                ["study", "spearman"], [[k, v] for k, v in corr.items()], "")
    speedup = rows[1][6] / rows[0][6]
    print(f"summary: {rows[0][6]:.0f} trials/h with 1 worker, {rows[1][6]:.0f} with 2 ({speedup:.2f}x); "
          f"pruned {rows[0][7]:.0%} / {rows[1][7]:.0%}; Spearman(unsupervised, PSNR) "
          + ", ".join(f"{k}: {v:+.2f}" for k, v in corr.items()))


if __name__ == "__main__":
    main()
