"""What the README promises of the ways in: an MLflow Project entry point runs the stage under
its own run, `torchrun` trains a prior with several processes logging once (other stages refuse
to), and long stages record MLflow system metrics."""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.conftest import REPO
from tests.test_pipeline import sh


def stage_runs(ws, stage):
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlruns.db'}")
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`ddmops.stage` = '{stage}'")


@pytest.mark.slow
def test_mlflow_run_of_an_entry_point_nests_the_stage_run(tiny_workspace):
    ws = tiny_workspace
    shutil.copy(REPO / "MLproject", ws / "MLproject")
    uri = f"sqlite:///{ws / 'mlruns.db'}"  # README: `mlflow run` with the workspace's store
    done = sh([sys.executable, "-m", "mlflow", "run", str(ws), "-e", "prepare", "--env-manager", "local",
               "--experiment-name", "ddmops"], ws, env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = stage_runs(ws, "prepare")
    assert run.info.status == "FINISHED" and (ws / "data" / "prepared" / "clean.npz").is_file()
    import mlflow
    parent = mlflow.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags.get("mlflow.project.entryPoint") == "prepare"  # the project's run is the parent


@pytest.mark.slow
def test_torchrun_trains_a_prior_logging_once_and_other_stages_refuse(tiny_workspace):
    ws = tiny_workspace
    assert sh(["ddmops", "run", "prepare"], ws).returncode == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python"]
    done = sh([*torchrun, "ddmops", "run", "train-prior", "--domain", "clean", "--no-progress"], ws)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = stage_runs(ws, "train-prior-clean")  # rank 1 logged nothing: one run, each step once
    assert run.data.tags["ddmops.processes"] == "2" and run.info.status == "FINISHED"
    import mlflow
    from collections import Counter
    logged = Counter(m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss/train"))
    last = max(logged)  # each log step once; the last twice: the loop's log and the stage's summary
    assert len(logged) >= 2 and logged[last] == 2 and all(n == 1 for step, n in logged.items() if step != last)
    assert (ws / "models" / "priors" / "clean" / "prior.safetensors").is_file()
    refused = sh([*torchrun, "ddmops", "run", "degrade", "--task", "deblur", "--no-progress"], ws)
    assert refused.returncode != 0 and "does not run under torchrun with several processes" in refused.stderr


def test_long_stages_record_system_metrics(tiny_workspace):
    ws = tiny_workspace
    assert sh(["ddmops", "run", "prepare"], ws).returncode == 0
    fast = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"}
    done = sh(["ddmops", "run", "train-prior", "-d", "clean", "--set", "train_prior.clean.images=2048"], ws, env=fast)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = stage_runs(ws, "train-prior-clean")
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    (short,) = stage_runs(ws, "prepare")  # not a long stage: no sampling thread
    assert not any(k.startswith("system/") for k in short.data.metrics)
