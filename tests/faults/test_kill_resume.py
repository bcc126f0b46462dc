"""SIGKILL a training stage, rerun the same command: it resumes from the last checkpoint, in
the same MLflow run, and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from tests.conftest import write_workspace
from tests.test_pipeline import BIN, sh

LONGER = ["train_prior.clean.images=1536", "train_prior.clean.checkpoint_every=128",
          "train_prior.clean.log_every=64", "train_prior.clean.sample_every=100000"]


def weights(ws):
    from ddmops.flow.prior import FlowPrior
    return FlowPrior.load(ws / "models" / "priors" / "clean" / "prior.safetensors").net.state_dict()


@pytest.mark.slow
def test_sigkill_then_rerun_resumes(tmp_path):
    ws_a, ws_b = (write_workspace(tmp_path / n, LONGER).parent for n in ("a", "b"))
    for ws in (ws_a, ws_b):
        assert sh(["ddmops", "run", "prepare"], ws).returncode == 0
    assert sh(["ddmops", "run", "train-prior", "-d", "clean"], ws_a).returncode == 0  # uninterrupted

    ckpt = ws_b / ".checkpoints" / "train-prior-clean.pt"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["ddmops", "run", "train-prior", "-d", "clean", "--no-progress"], cwd=ws_b, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= 24):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step_at_kill < 96, "killed before the end"

    assert sh(["ddmops", "run", "train-prior", "-d", "clean"], ws_b).returncode == 0
    for (k, a), b in zip(weights(ws_a).items(), weights(ws_b).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{ws_b / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`ddmops.stage` = 'train-prior-clean'",
                              output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the killed run was continued
    assert runs[0].data.tags.get("ddmops.resumed") == "true"
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "loss/train")
    assert max(h.step for h in history) == 1536


def _interrupt(monkeypatch, module, name: str, at: int) -> list[int]:
    """``module.name`` raises KeyboardInterrupt on its ``at``-th call; returns the call counter."""
    calls, real = [0], getattr(module, name)

    def wrapped(*args, **kw):
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(module, name, wrapped)
    return calls


def _interrupt_and_rerun(monkeypatch, module, name: str, params, ws, stage: str, item: str,
                         checkpoint) -> tuple[dict, list[int]]:
    """Run ``stage`` with ``module.name`` interrupted on its second call (the checkpoint then holds
    one finished part), then rerun it uninterrupted; -> (the rerun's metrics, the call counter
    started at -100 for the rerun)."""
    from pipelines.runner import run_stage
    calls = _interrupt(monkeypatch, module, name, at=2)
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, params, ws, item=item, progress=False)
    assert len(torch.load(checkpoint, weights_only=True)["parts"]) == 1
    calls[0] = -100  # the rerun goes through
    return run_stage(stage, params, ws, item=item, progress=False), calls


def _images(path):
    with np.load(path) as f:
        return np.stack([f[k] for k in sorted(f.files) if k.startswith("img_")])


def test_interrupted_dcdp_resumes_to_the_same_restoration(tiny_workspace, monkeypatch):
    """A long DCDP restoration checkpoints every few outer iterations; interrupted part way
    through its second image and rerun, it ends with the uninterrupted run's images."""
    import mlflow

    from ddmops.config import load_params
    from ddmops.inversion import dcdp as dcdp_module
    from pipelines.runner import run_stage

    ws = tiny_workspace
    params = load_params(ws / "params.yaml", [
        "restore.images=2", "restore.batch_size=1", "restore.nonlinear_deblur.dcdp.iterations=6",
        "restore.nonlinear_deblur.dcdp.checkpoint_every=2"])
    run_stage("prepare", params, ws, progress=False)
    run_stage("train-prior", params, ws, item="clean", progress=False)
    out = ws / "outputs" / "tasks" / "nonlinear_deblur"
    ckpt = ws / ".checkpoints" / "restore-nonlinear_deblur-dcdp-ode.pt"

    first = run_stage("restore-dcdp", params, ws, item="nonlinear_deblur", progress=False)
    reference = {n: _images(out / f"{n}.npz") for n in ("dcdp-ode", "dcdp-tweedie")}
    assert not ckpt.exists()  # a finished run leaves nothing to resume
    for f in out.glob("*.npz"):
        f.unlink()

    calls = _interrupt(monkeypatch, dcdp_module, "purify", at=9)  # image 1, iteration 3: after a checkpoint at 2
    with pytest.raises(KeyboardInterrupt):
        run_stage("restore-dcdp", params, ws, item="nonlinear_deblur", progress=False)
    state = torch.load(ckpt, weights_only=True)
    assert len(state["parts"]) == 1 and state["partial"]["iteration"] == 2

    calls[0] = -100  # the rerun goes through
    second = run_stage("restore-dcdp", params, ws, item="nonlinear_deblur", progress=False)
    for name in reference:
        np.testing.assert_allclose(_images(out / f"{name}.npz"), reference[name], rtol=0, atol=1e-6)
    assert second["psnr/dcdp-ode"] == pytest.approx(first["psnr/dcdp-ode"], abs=1e-6)
    assert second["nfe/dcdp-ode"] == first["nfe/dcdp-ode"]
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string="tags.`ddmops.stage` = 'restore-dcdp-nonlinear_deblur'")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]  # the interrupted one continued
    assert sum(r.data.tags.get("ddmops.resumed") == "true" for r in runs) == 1


def test_interrupted_dps_resumes_from_its_finished_batches(tiny_workspace, monkeypatch):
    """DPS saves each restored batch (images, PSNRs, NFE and the generator): interrupted in its
    second image and rerun, it restores only that one and ends with the uninterrupted images."""
    from ddmops.config import load_params
    from pipelines import restore as restore_module
    from pipelines.runner import run_stage

    ws = tiny_workspace
    params = load_params(ws / "params.yaml", ["restore.images=2", "restore.batch_size=1"])
    run_stage("prepare", params, ws, progress=False)
    run_stage("train-prior", params, ws, item="clean", progress=False)
    out = ws / "outputs" / "tasks" / "superres" / "dps.npz"
    first = run_stage("restore-dps", params, ws, item="superres", progress=False)
    reference = _images(out)
    assert len(reference) == 2 and not (ws / ".checkpoints" / "restore-superres-dps.pt").exists()
    out.unlink()

    second, calls = _interrupt_and_rerun(monkeypatch, restore_module, "dps", params, ws, "restore-dps", "superres",
                                         ws / ".checkpoints" / "restore-superres-dps.pt")
    assert calls[0] == -99  # only the second image was restored again
    np.testing.assert_allclose(_images(out), reference, rtol=0, atol=1e-6)
    assert second["psnr/dps"] == pytest.approx(first["psnr/dps"], abs=1e-6) and second["nfe/dps"] == first["nfe/dps"]


def _dvc_workspace(path, overrides):
    ws = write_workspace(path, overrides).parent
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        assert sh(cmd, ws).returncode == 0
    return ws


@pytest.mark.slow
def test_killed_dvc_repro_reruns_to_the_same_metrics(tmp_path):
    """SIGKILL `dvc repro` (and the stage it runs) mid-training; `dvc repro` again finishes
    with the metrics of an uninterrupted repro."""
    import json

    ws_a, ws_b = (_dvc_workspace(tmp_path / n, LONGER) for n in ("a", "b"))
    target = "train-prior-clean"
    done = sh(["dvc", "repro", target], ws_a)
    assert done.returncode == 0, done.stderr[-2000:]

    ckpt = ws_b / ".checkpoints" / "train-prior-clean.pt"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(["dvc", "repro", target], cwd=ws_b, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= 24):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the `ddmops run` it started
    proc.wait()
    assert 0 < torch.load(ckpt, weights_only=True)["step"] < 96, "killed before the end"

    again = sh(["dvc", "repro", target], ws_b)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    a, b = (json.loads((ws / "metrics" / f"{target}.json").read_text()) for ws in (ws_a, ws_b))
    timing = ("seconds", "per_s", "images_per")
    same = {k: v for k, v in a.items() if not any(t in k for t in timing)}
    assert same and {k: b[k] for k in same} == pytest.approx(same, abs=1e-6)
    assert sh(["dvc", "status", target], ws_b).stdout.strip().endswith("up to date.")


def test_interrupted_invert_resumes_from_its_finished_batches(tiny_workspace, monkeypatch):
    """DDM4IP step 3 saves each restored batch: interrupted in its second batch and rerun,
    it restores only what was left and ends with the uninterrupted run's images."""
    from ddmops.config import load_params
    from pipelines import invert as invert_module
    from pipelines.runner import run_stage

    ws = tiny_workspace
    params = load_params(ws / "params.yaml", ["invert.deblur.batch_size=1"])
    for name, item in [("prepare", None), ("train-prior", "clean"), ("degrade", "deblur"),
                       ("train-prior", "deblur"), ("learn-operator", "deblur")]:
        run_stage(name, params, ws, item=item, progress=False)
    out = ws / "outputs" / "restored" / "deblur"
    first = run_stage("invert", params, ws, item="deblur", progress=False)
    reference = {n: _images(out / f"{n}.npz") for n in ("learned", "oracle")}
    assert len(reference["learned"]) >= 2 and not list((ws / ".checkpoints").glob("invert-*"))

    second, calls = _interrupt_and_rerun(monkeypatch, invert_module, "invert", params, ws, "invert", "deblur",
                                         ws / ".checkpoints" / "invert-deblur-learned.pt")
    assert calls[0] == -100 + len(reference["learned"]) - 1 + len(reference["oracle"])  # batch 0 not redone
    for name in reference:
        np.testing.assert_allclose(_images(out / f"{name}.npz"), reference[name], rtol=0, atol=1e-6)
    assert second["nfe"] == first["nfe"]
