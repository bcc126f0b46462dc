"""Runs people can compare: same metric keys across variants, dataset inputs carrying the DVC
hash of the data, DVC experiment names, `ddmops runs` and `ddmops compare`."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ddmops.config import load_params
from ddmops.ops.hashing import path_digest
from ddmops.ops.runs import columns, resolve
from ddmops.ops.tracking import embedded_uri
from pipelines.runner import run_stage
from tests.test_pipeline import sh


def _run(ws, stage, item=None, overrides=(), exp=None, monkeypatch=None):
    if exp:
        monkeypatch.setenv("DVC_EXP_NAME", exp)  # what `dvc exp run` sets for its stages
    else:
        monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return run_stage(stage, load_params(ws / "params.yaml", list(overrides)), ws, item=item, progress=False)


def _inputs(uri, run_id):
    import mlflow
    return {i.dataset.name: i.dataset.digest for i in mlflow.MlflowClient(uri).get_run(run_id).inputs.dataset_inputs}


def test_variants_line_up_and_compare(tiny_workspace, monkeypatch, tmp_path):
    ws, uri = tiny_workspace, embedded_uri(tiny_workspace)
    _run(ws, "prepare", monkeypatch=monkeypatch)
    a = _run(ws, "degrade", "deblur", ["degrade.noise_sigma=0.01"], "exp-a", monkeypatch)
    b = _run(ws, "degrade", "deblur", ["degrade.noise_sigma=0.05"], "exp-b", monkeypatch)
    assert a.keys() == b.keys()  # same columns

    (ra,), (rb,) = resolve(uri, "exp-a"), resolve(uri, "exp-b")
    assert ra.stage == rb.stage == "degrade-deblur" and ra.run_id != rb.run_id
    metrics, differing = columns({"exp-a": [ra], "exp-b": [rb]})
    assert metrics["exp-a"].keys() == metrics["exp-b"].keys()
    assert differing == {"exp-a": {"degrade.noise_sigma": "0.01"}, "exp-b": {"degrade.noise_sigma": "0.05"}}
    # the data went in as a dataset whose digest is its DVC hash
    assert _inputs(uri, ra.run_id) == {"data/prepared": path_digest(ws / "data" / "prepared")}

    done = sh(["ddmops", "compare", "exp-a", "exp-b", "--out", str(tmp_path / "cmp.png")], ws)
    assert done.returncode == 0, done.stderr
    assert "exp-a" in done.stdout and "exp-b" in done.stdout and "degrade.noise_sigma" in done.stdout
    assert "0.01" in done.stdout and "0.05" in done.stdout
    import mlflow
    logged = Image.open(mlflow.MlflowClient(uri).download_artifacts(ra.run_id, "deblur_truth.png", str(tmp_path)))
    png = np.asarray(Image.open(tmp_path / "cmp.png"))
    assert png.shape[1] >= 2 * logged.width and png.shape[0] >= 2 * logged.height  # 2 runs x 2 pictures

    listed = sh(["ddmops", "runs", "--task", "deblur"], ws)
    assert listed.returncode == 0 and listed.stdout.count("degrade-deblur") == 2 and "exp-b" in listed.stdout


def test_dataset_digest_follows_the_data(tiny_workspace, monkeypatch):
    ws, uri = tiny_workspace, embedded_uri(tiny_workspace)
    digests = []
    for seed in (0, 1):
        _run(ws, "prepare", overrides=[f"prepare.seed={seed}"], monkeypatch=monkeypatch)
        _run(ws, "degrade", "deblur", [f"prepare.seed={seed}"], monkeypatch=monkeypatch)
        (run,) = resolve(uri, "degrade-deblur")  # the latest
        digests.append(_inputs(uri, run.run_id)["data/prepared"])
    assert digests[0] != digests[1] and digests[1] == path_digest(ws / "data" / "prepared")


def test_unknown_reference_is_named(tiny_workspace, monkeypatch):
    _run(tiny_workspace, "prepare", monkeypatch=monkeypatch)
    done = sh(["ddmops", "compare", "no-such-exp", "prepare"], tiny_workspace)
    assert done.returncode == 1 and "no-such-exp: no MLflow run" in done.stderr and "Traceback" not in done.stderr


def test_dvc_exp_run_names_the_run(tiny_workspace):
    ws = tiny_workspace
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "ws"]):
        assert sh(cmd, ws).returncode == 0
    done = sh(["dvc", "exp", "run", "prepare", "-S", "prepare.seed=3", "-n", "seed3"], ws)
    assert done.returncode == 0, done.stderr
    (run,) = resolve(embedded_uri(ws), "seed3")
    assert run.stage == "prepare" and run.params["prepare.seed"] == "3" and run.tags["ddmops.dvc_exp"] == "seed3"
