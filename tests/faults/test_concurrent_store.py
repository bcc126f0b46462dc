"""Several processes on one fresh SQLite MLflow store at once (a `dvc repro` and two tuning
workers): no run and no metric lost, no "database is locked"."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ddmops.ops.tracking import embedded_uri

WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ddmops.ops.tracking import MlflowTracker
    root, name, runs, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for r in range(runs):
        with MlflowTracker.open(root=root, experiment="ddmops", stage=f"{name}-{r}", run_key=f"{name}-{r}",
                                pipeline="shared") as t:
            t.log_params({"worker": name, "run": r})
            for s in range(steps):
                t.log_metrics({"loss": s / steps, "psnr": float(r)}, step=s)
""")


def test_three_writers_lose_nothing(tmp_path):
    runs, steps, names = 3, 40, ("repro", "tune-a", "tune-b")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), n, str(runs), str(steps)],
                              stderr=subprocess.PIPE, text=True) for n in names]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors

    import mlflow
    client = mlflow.MlflowClient(embedded_uri(tmp_path))
    (exp,) = [e for e in client.search_experiments() if e.name == "ddmops"]
    found = client.search_runs([exp.experiment_id], max_results=1000)
    stages = [r for r in found if r.data.tags.get("ddmops.role") != "pipeline"]
    parents = {r.info.run_id for r in found} - {r.info.run_id for r in stages}
    assert len(parents) == 1  # one pipeline parent, though three processes asked for it at once
    assert sorted(r.info.run_name for r in stages) == sorted(f"{n}-{r}" for n in names for r in range(runs))
    for r in stages:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] in parents
        history = client.get_metric_history(r.info.run_id, "loss")
        assert [m.step for m in history] == list(range(steps))
    assert (tmp_path / "mlruns.db").exists()
    import sqlite3
    assert sqlite3.connect(tmp_path / "mlruns.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
