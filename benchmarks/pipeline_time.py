"""Where the default `dvc repro` spends its time: seconds per stage, for one or more commits.

Each commit's files (`git archive`) go to a fresh folder with a fresh git repository and DVC
cache, and `dvc repro` runs there with that commit's code first on the Python path (this
interpreter's packages otherwise). Per stage run: its MLflow run's duration (the stage's own
work) and, for the whole repro, the wall time (process starts, imports, DVC's hashing and the
MLflow store included). Headline metrics are printed side by side, so a faster commit can be
checked to restore as well.

    python benchmarks/pipeline_time.py [--refs dc9c6cf HEAD] [--workdir .bench/pipeline_time] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, print_table  # noqa: E402

HEADLINE = ["evaluate-deblur.json:psnr/restored", "evaluate-deblur.json:kernel/ncc",
            "evaluate-psf_grid.json:psnr/restored", "evaluate-sr_kernel.json:psnr/restored",
            "train-prior-clean.json:loss/val"]


def checkout(ref: str, folder: Path) -> None:
    """The files of commit ``ref`` in ``folder``, a new git repository with one commit."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x"], input=archive, cwd=folder, check=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", "commit", "-qm", ref]):
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True)


def stage_seconds(folder: Path) -> dict[str, float]:
    """Duration of each stage's MLflow run (its last run, in seconds)."""
    import sqlite3
    con = sqlite3.connect(folder / "mlruns.db")
    rows = con.execute("select t.value, r.start_time, r.end_time from runs r join tags t on t.run_uuid = r.run_uuid "
                       "where t.key = 'ddmops.stage' and r.end_time is not null order by r.start_time").fetchall()
    con.close()
    return {stage: (end - start) / 1000 for stage, start, end in rows}


def repro(ref: str, workdir: Path, overrides: list[str]) -> dict:
    folder = workdir / ref.replace("/", "_")
    checkout(ref, folder)
    env = {**os.environ, "PYTHONPATH": str(folder), "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *sum((["-S", o] for o in overrides), [])] if overrides else \
        [sys.executable, "-m", "dvc", "repro"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (workdir / f"{folder.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"dvc repro of {ref} failed (log: {workdir / (folder.name + '.log')})")
    metrics = {}
    for item in HEADLINE:
        name, key = item.split(":")
        path = folder / "metrics" / name
        metrics[item] = json.loads(path.read_text()).get(key) if path.exists() else None
    return {"wall": wall, "stages": stage_seconds(folder), "metrics": metrics}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", nargs="+", default=["HEAD"])
    ap.add_argument("--workdir", default=str(ROOT / ".bench" / "pipeline_time"))
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    workdir = Path(args.workdir).resolve()
    results = {}
    for ref in args.refs:
        results[ref] = repro(ref, workdir, args.overrides)
        print(f"{ref}: {results[ref]['wall']:.0f} s", flush=True)
    stages = sorted({s for r in results.values() for s in r["stages"]},
                    key=lambda s: -max(r["stages"].get(s, 0.0) for r in results.values()))
    rows = [[s, *[r["stages"].get(s, "-") for r in results.values()]] for s in stages]
    rows.append(["all stage runs", *[sum(r["stages"].values()) for r in results.values()]])
    rows.append(["dvc repro wall time", *[r["wall"] for r in results.values()]])
    rows += [[m, *[r["metrics"][m] if r["metrics"][m] is not None else "-" for r in results.values()]]
             for m in HEADLINE]
    walls = [r["wall"] / 60 for r in results.values()]
    print_table("Default `dvc repro` per stage (s) and headline metrics", ["stage", *args.refs], rows,
                "pipeline_time: dvc repro " + ", ".join(f"{ref} {w:.1f} min" for ref, w in zip(args.refs, walls))
                + " (goal: at most 13 min on 2 cores)")


if __name__ == "__main__":
    main()
