"""End to end: `dvc repro` of the real dvc.yaml on the tiny profile, tracked in MLflow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ddmops.config import DDM4IP_TASKS, TASKS
from tests.conftest import write_workspace

BIN = Path(sys.executable).parent


def sh(cmd: list[str], cwd: Path, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with this interpreter's scripts first on PATH, the workspace's own
    tracking store (no MLFLOW_TRACKING_URI) and the variables of ``env``."""
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=cwd, env={**full, **(env or {})}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """A git + DVC workspace after one tiny `dvc repro` (shared by the tests below)."""
    ws = write_workspace(tmp_path_factory.mktemp("pipeline") / "ws").parent
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        assert sh(cmd, ws).returncode == 0
    sh(["git", "add", "-A"], ws)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], ws)
    result = sh(["dvc", "repro"], ws)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return ws


@pytest.mark.slow
def test_repro_writes_metrics(repro):
    from ddmops.config import load_params
    from ddmops.data import load_image_set
    from ddmops.inversion.dcdp import purification_schedule
    from ddmops.metrics import psnr
    from ddmops.ops.workspace import Workspace

    for path in (repro / "metrics").glob("*.json"):  # every number any stage wrote is finite
        values = [v for v in json.loads(path.read_text()).values() if isinstance(v, (int, float))]
        assert values and all(math.isfinite(v) for v in values), path.name
    for task in DDM4IP_TASKS:
        metrics = json.loads((repro / "metrics" / f"evaluate-{task}.json").read_text())
        for key in ("psnr/input", "psnr/restored", "psnr/oracle", "ssim/restored", "kernel/ncc", "kernel/mae"):
            assert key in metrics, (task, key)
        # the learned kernel is closer to the truth than a delta or a box of its size
        assert max(metrics["kernel/ncc_delta"], metrics["kernel/ncc_uniform"]) < metrics["kernel/ncc"] <= 1 + 1e-9
        # step 3's default method with the learned operator gives a better picture than the observation
        assert metrics["psnr/restored"] > metrics["psnr/input"], (task, metrics)
        # the learned restoration's translation is refined below the whole pixel its kernel comparison gave
        assert max(abs(metrics["restored/fine_shift_rows"]), abs(metrics["restored/fine_shift_cols"])) <= 1
        assert (repro / "reports" / task / "restoration_grid.png").is_file()
        for stage in ("degrade", "train-prior", "learn-operator", "invert"):
            assert (repro / "metrics" / f"{stage}-{task}.json").is_file()
    assert (repro / "metrics" / "prepare.json").is_file()
    assert (repro / "dvc.lock").is_file()

    params = load_params(repro / "params.yaml")
    ws = Workspace(repro, params.paths)
    clean = torch.stack(load_image_set(ws.prepared("test"))[:params.restore.images])
    for task in TASKS:
        metrics = json.loads((repro / "metrics" / f"restore-dcdp-{task}.json").read_text())
        metrics |= json.loads((repro / "metrics" / f"restore-dps-{task}.json").read_text())
        cfg = getattr(params.restore, task)
        ode = cfg.dcdp.for_mode("ode")
        schedule = purification_schedule(ode.iterations, ode.t_start, ode.t_end, ode.schedule)
        # one denoiser call per ODE step of each purification (fewer when T_k is smaller), one per
        # Tweedie purification, one per DPS step
        assert metrics["nfe/dcdp-ode"] == sum(min(ode.ode_steps, t) for t in schedule), task
        assert metrics["nfe/dcdp-tweedie"] == cfg.dcdp.for_mode("tweedie").iterations, task
        assert metrics["nfe/dps"] == cfg.dps.steps, task
        for method in ("dcdp-ode", "dcdp-tweedie", "dps"):  # the PSNR is that of the restorations saved
            x = torch.stack(load_image_set(ws.task_output(task, method)))
            assert x.shape == clean.shape and x.abs().max() <= 1, (task, method)
            assert metrics[f"psnr/{method}"] == pytest.approx(psnr(x, clean).mean().item(), abs=1e-4), (task, method)


@pytest.mark.slow
def test_repro_again_is_a_no_op(repro):
    import mlflow
    lock = (repro / "dvc.lock").read_text()
    mlflow.set_tracking_uri(f"sqlite:///{repro / 'mlruns.db'}")
    runs = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    result = sh(["dvc", "repro"], repro)
    assert result.returncode == 0, result.stderr
    status = sh(["dvc", "status"], repro)
    assert status.returncode == 0 and "Data and pipelines are up to date." in status.stdout, status.stdout
    assert (repro / "dvc.lock").read_text() == lock  # nothing re-ran ...
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == runs  # ... or was tracked


@pytest.mark.slow
def test_mlflow_holds_runs_and_artifacts(repro):
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{repro / 'mlruns.db'}")
    exp = mlflow.get_experiment_by_name("ddmops")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    stages = {r.data.tags.get("ddmops.stage"): r for r in runs if r.data.tags.get("ddmops.role") != "pipeline"}
    expected = {"prepare", "train-prior-clean"} | {f"{s}-{t}" for s in ("degrade", "train-prior", "learn-operator",
                                                                      "invert", "evaluate") for t in DDM4IP_TASKS}
    assert set(stages) == expected | {f"restore-{m}-{t}" for m in ("dcdp", "dps") for t in TASKS}
    parents = {r.data.tags["mlflow.parentRunId"] for r in stages.values()}
    assert len(parents) == 1  # one pipeline run groups them
    assert all(r.info.status == "FINISHED" for r in stages.values())
    ev = stages["evaluate-deblur"]
    assert "psnr/restored" in ev.data.metrics and ev.data.params  # metrics and resolved params logged
    client = mlflow.MlflowClient()
    files = {a.path for a in client.list_artifacts(ev.info.run_id)}
    assert {"restoration_grid.png", "kernel_vs_truth.png"} <= files
    lo = stages["learn-operator-psf_grid"]
    assert {a.path for a in client.list_artifacts(lo.info.run_id, "operator")} >= {"operator/operator.npz"}
    history = client.get_metric_history(stages["train-prior-clean"].info.run_id, "loss/train")
    assert len(history) >= 2 and history[-1].step > history[0].step  # a curve, stepped by images seen
    assert stages["prepare"].data.tags["ddmops.data.data/source"]  # input digests recorded
    # inputs as MLflow datasets carrying their DVC hash; curves for `dvc plots` and as a picture
    lo_inputs = {i.dataset.name: i.dataset.digest for i in client.get_run(lo.info.run_id).inputs.dataset_inputs}
    lock = yaml.safe_load((repro / "dvc.lock").read_text())["stages"]["learn-operator@psf_grid"]["deps"]
    assert lo_inputs == {d["path"]: d["md5"] for d in lock}
    for name in ("train-prior-clean", "learn-operator-deblur"):
        assert "curves.png" in {a.path for a in client.list_artifacts(stages[name].info.run_id)}
    rows = json.loads((repro / "metrics" / "curves" / "learn-operator-deblur.json").read_text())
    assert len(rows) >= 2 and all("kernel/ncc" in r and "loss/dm" in r for r in rows)
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})


@pytest.mark.slow
def test_dvc_plots_read_the_curves(repro):
    result = sh(["dvc", "plots", "show", "--json"], repro)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert not shown.get("errors"), shown["errors"]
    for plot in ("flow-matching loss", "distribution-matching loss", "kernel error"):
        (figure,) = shown["data"][plot]
        assert len(figure["content"]["data"]["values"]) >= 2 * len(DDM4IP_TASKS), plot  # every curve drawn


@pytest.mark.slow
def test_learned_operators_are_registered_then_promoted(repro):
    import mlflow
    import numpy as np
    import yaml

    from ddmops.operators.psf_operator import PsfOperator
    from ddmops.ops.registry import MODEL_NAMES, fetch_operator
    from ddmops.ops.tracking import use_tracking
    use_tracking(f"sqlite:///{repro / 'mlruns.db'}")
    lock = yaml.safe_load((repro / "dvc.lock").read_text())["stages"]
    for task in DDM4IP_TASKS:
        (mv,) = mlflow.MlflowClient().search_model_versions(f"name = '{MODEL_NAMES[task]}'")
        (out,) = [o for o in lock[f"degrade@{task}"]["outs"] if o["path"] == f"data/degraded/{task}"]
        assert mv.tags["ddmops.data_hash"] == out["md5"]  # the DVC hash of the task's observations
        assert "ddmops.metric.kernel/ncc" in mv.tags and "ddmops.metric.loss/dm" in mv.tags
    result = sh(["ddmops", "registry", "promote", "--task", "psf_grid"], repro)
    assert result.returncode == 0 and "promoted: first champion" in result.stdout, result.stderr
    served, _ = fetch_operator("models:/ddmops-psf-grid@champion")
    learned = PsfOperator.load(repro / "models" / "operator" / "psf_grid")
    np.testing.assert_array_equal(served.psf_grid, learned.psf_grid)


def test_cli_rejects_unknown_key(tiny_workspace):
    result = sh(["ddmops", "run", "prepare", "--set", "degrade.noise_sigmaa=0.1"], tiny_workspace)
    assert result.returncode == 1
    assert "degrade.noise_sigmaa" in result.stderr and "did you mean 'degrade.noise_sigma'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_unknown_stage_and_missing_inputs(tiny_workspace):
    result = sh(["ddmops", "run", "train-everything"], tiny_workspace)
    assert result.returncode == 1 and "unknown stage" in result.stderr
    result = sh(["ddmops", "run", "learn-operator", "--task", "deblur"], tiny_workspace)  # nothing has run
    assert result.returncode == 1 and "meta.json" in result.stderr and "Traceback" not in result.stderr


def test_dvc_params_cover_what_each_stage_reads():
    """Every value a stage run reads (as logged to MLflow) is a params dependency of its dvc.yaml
    stage, so changing it makes `dvc repro` rerun the stage."""
    from ddmops.config import load_params
    from pipelines import STAGES
    from pipelines.runner import logged_params

    root = Path(__file__).resolve().parents[1]
    params = load_params(root / "params.yaml")
    for name, spec in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        stage = STAGES.get(name) or STAGES[name.rsplit("-", 1)[0]]
        items = spec.get("foreach") or [name[len(stage.name) + 1:] or None]
        body = spec.get("do", spec)
        for item in items:
            deps = [p.replace("${item}", item or "") for p in body.get("params", [])]
            cfg = stage.config(getattr(params, stage.section), item)
            for section, values in logged_params(stage, params, cfg, item).items():
                read = [section] if stage.select is None else [f"{section}.{k}" for k in values]
                missing = [k for k in read if not any(k == d or k.startswith(d + ".") for d in deps)]
                assert not missing, f"dvc.yaml stage {name}[{item}] lacks params {missing}"
