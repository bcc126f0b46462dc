"""Your own camera: real observations through every stage without a truth, `ddmops calibrate`
(DVC, registry by name, promotion), `ddmops serve --name`, `ddmops restore` of photos, and
the bad inputs each refuses with one line, writing nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddmops.data import source_images, to_tensor
from ddmops.flow.prior import FlowPrior
from ddmops.io import read_image_float, write_image
from ddmops.operators.blur import convolve
from ddmops.operators.kernels import gaussian_kernel
from pipelines.photos import MANIFEST, MODEL_ERROR
from tests.conftest import write_workspace
from tests.test_pipeline import BIN, sh

KERNEL = gaussian_kernel(5, (1.2, 0.8), 30.0)


def photos(folder: Path, n: int, side: int, blur: bool, start: int = 0, depth: int = 8, grey: bool = False) -> Path:
    """n photos of side ``side`` cut from scikit-image's, blurred by KERNEL with noise 0.02 if ``blur``."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(start)
    pad = KERNEL.shape[-1] - 1 if blur else 0
    images = [to_tensor(a) for _, a in source_images("", 3, 200) if min(a.shape[:2]) >= side + pad]
    for i, x in enumerate(images[start:start + n]):
        x = x[:, :side + pad, :side + pad]
        if blur:
            x = convolve(x[None], KERNEL, "valid")[0] + 0.02 * torch.randn(3, side, side, generator=g)
        u = ((x.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
        write_image(folder / f"p{i}.png", u.mean(-1, keepdims=True) if grey else u, depth)
    return folder


def dvc_workspace(path: Path, overrides: list[str] = ()) -> Path:
    ws = write_workspace(path, ["degrade.observations.tile_size=32", "degrade.observations.test_size=40",
                                *overrides]).parent
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "ws"]):
        assert sh(cmd, ws).returncode == 0
    return ws


def test_every_stage_runs_without_a_truth(tiny_workspace):
    """A folder of real observations: degrade cuts it (noise estimated), and learn-operator,
    invert and evaluate run with no truth: evaluate reports only what needs none."""
    ws = tiny_workspace
    photos(ws / "data" / "observed" / "cam", 5, 72, blur=True)
    s = ["-S", "degrade.deblur.observed=data/observed/cam", "-S", "degrade.observations.tile_size=32",
         "-S", "degrade.observations.test_size=40"]
    for stage in (["prepare"], ["degrade", "--task", "deblur"], ["train-prior", "-d", "deblur"],
                  ["train-prior", "-d", "clean"], ["learn-operator", "--task", "deblur"], ["invert", "--task", "deblur"],
                  ["evaluate", "--task", "deblur"]):
        done = sh(["ddmops", "run", *stage, *s], ws)
        assert done.returncode == 0, (stage, done.stderr[-2000:])
    meta = json.loads((ws / "data" / "degraded" / "deblur" / "meta.json").read_text())
    assert meta["noise_estimated"] and abs(meta["noise_sigma"] - 0.02) < 0.005  # 0.02, plus 8-bit rounding
    assert not (ws / "data" / "degraded" / "deblur" / "truth.npz").exists()
    metrics = json.loads((ws / "metrics" / "evaluate-deblur.json").read_text())
    assert not any(k.startswith(("psnr", "ssim")) or k == "kernel/ncc" for k in metrics)
    assert {"residual/restored", "score/observation_gap", "kernel/support", "kernel/centre_offset"} <= set(metrics)
    assert 0.5 < metrics["residual/restored"] < 3  # the restorations explain their observations near the noise
    assert (ws / "reports" / "deblur" / "kernel_vs_truth.png").is_file()
    rows = json.loads((ws / "reports" / "deblur" / "per_image.json").read_text())
    assert rows and all("residual" in r and "psnr" not in r for r in rows)


@pytest.mark.slow
def test_calibrate_promote_serve_restore(tmp_path):
    """The real-device flow through the CLI on a tiny set: calibrate (and promote), serve the
    champion by the device's name, restore photos with it (resumable, names and depth kept)."""
    ws = dvc_workspace(tmp_path / "ws")
    observed, clean = photos(tmp_path / "obs", 7, 96, blur=True), photos(tmp_path / "clean", 6, 96, blur=False, start=7)
    done = sh(["ddmops", "calibrate", "--name", "cam-a", "--task", "deblur", "--observed", str(observed),
               "--clean", str(clean), "--kernel-size", "5", "--promote"], ws)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "registered ddmops-psf-cam-a version 1" in done.stdout and "promoted: first champion" in done.stdout
    device = ws / "devices" / "cam-a"
    assert (device / "dvc.lock").is_file() and (device / "data" / "observed.dvc").is_file()
    assert sh(["dvc", "status", "devices/cam-a/dvc.yaml"], ws).stdout.strip().endswith("up to date.")
    listed = sh(["ddmops", "registry", "list", "--name", "cam-a"], ws)
    assert "ddmops-psf-cam-a" in listed.stdout and "champion" in listed.stdout

    import requests

    from ddmops.ops.model_server import free_port
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(["ddmops", "serve", "--name", "cam-a", "--port", str(port)], cwd=ws, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answer = None
        for _ in range(120):
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [{"kind": "info"}]},
                                       timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert answer is not None and answer.status_code == 200
        assert answer.json()["predictions"][0]["kernel_size"] == 5
    finally:
        server.terminate()
        server.wait(timeout=30)

    shots = photos(tmp_path / "shots", 2, 80, blur=True, start=3, depth=16)
    args = ["ddmops", "restore", str(shots), "--operator", "models:/ddmops-psf-cam-a@champion", "--prior",
            "devices/cam-a/models/priors/clean/prior.safetensors", "--out", str(tmp_path / "restored"), "--no-progress"]
    first = sh(args, ws)
    assert first.returncode == 0, first.stderr[-2000:]
    for name in ("p0.tif", "p1.tif"):  # 16-bit in, 16-bit TIFF out, the photo's size
        image, depth = read_image_float(tmp_path / "restored" / name)
        assert depth == 16 and image.shape == (80, 80, 3)
    again = sh(args, ws)
    assert "restored 0 photo(s)" in again.stdout and "2 already done" in again.stdout
    # the data term trusts the photo's noise (0.02, estimated) and the model's error in quadrature
    for entry in json.loads((tmp_path / "restored" / MANIFEST).read_text()).values():
        assert abs(entry["noise_sigma"] - 0.02) < 0.004
        assert entry["trusted_sigma"] == pytest.approx(math.hypot(entry["noise_sigma"], MODEL_ERROR))

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlruns.db'}")
    (run, *_) = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                   filter_string="tags.`ddmops.stage` = 'restore-photos'")
    assert run.data.tags["ddmops.operator.model"] == "ddmops-psf-cam-a" and "seconds_per_megapixel" in run.data.metrics
    prior = FlowPrior.load(ws / "devices" / "cam-a" / "models" / "priors" / "clean" / "prior.safetensors")
    assert run.data.params["tile"] == str(2 * prior.meta["patch_size"])  # tiles of twice the prior's patch
    assert {i.dataset.name for i in mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs} == {
        str(shots / "p0.tif"), str(shots / "p1.tif")}


@pytest.mark.parametrize("case, message", [
    ("empty", "no images found"),
    ("mixed sizes", "share one size"),
    ("too few", "too few observations"),
    ("smaller than the kernel", "smaller than the kernel"),
    ("grey clean", "1-channel images"),
    ("bad name", "a device name is"),
])
def test_calibrate_refuses_bad_input_and_writes_nothing(tmp_path, case, message):
    ws = dvc_workspace(tmp_path / "ws")
    observed, clean = tmp_path / "obs", photos(tmp_path / "clean", 3, 64, blur=False)
    name, kernel = "cam-b", "5"
    if case == "empty":
        observed.mkdir()
    elif case == "mixed sizes":
        photos(observed, 3, 64, blur=True)
        photos(observed / "more", 1, 48, blur=True)
    elif case == "too few":
        photos(observed, 2, 40, blur=True)
    elif case == "smaller than the kernel":
        photos(observed, 3, 40, blur=True)
        kernel = "41"
    elif case == "grey clean":
        photos(observed, 4, 64, blur=True)
        clean = photos(tmp_path / "grey", 3, 64, blur=False, grey=True)
    else:
        photos(observed, 4, 64, blur=True)
        name = "Lens A"
    before = sorted(p.relative_to(ws) for p in ws.rglob("*") if ".git" not in p.parts)
    done = sh(["ddmops", "calibrate", "--name", name, "--task", "deblur", "--observed", str(observed),
               "--clean", str(clean), "--kernel-size", kernel], ws)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.relative_to(ws) for p in ws.rglob("*") if ".git" not in p.parts) == before  # nothing written


def test_restore_refuses_bad_input(tiny_workspace, tmp_path):
    """Unknown operator URIs, an output folder inside the inputs, a negative noise level, photos of
    another channel count (after the readable ones are done), unreadable files: each named, exit 1."""
    ws = tiny_workspace
    assert sh(["ddmops", "run", "prepare"], ws).returncode == 0
    assert sh(["ddmops", "run", "train-prior", "-d", "clean"], ws).returncode == 0
    from ddmops.operators.psf_operator import BlurKernel
    BlurKernel(KERNEL.numpy()).save(ws / "k.npz")
    shots = photos(tmp_path / "shots", 2, 48, blur=True)
    photos(tmp_path / "shots", 1, 48, blur=True, start=5, grey=True)  # p0.png overwritten: a grey photo
    (shots / "broken.png").write_text("not an image")
    run = ["ddmops", "restore", str(shots), "--operator", "k.npz", "--no-progress"]
    unknown = sh(["ddmops", "restore", str(shots), "--operator", "models:/nothing@champion", "--out",
                  str(tmp_path / "o1")], ws)
    assert unknown.returncode == 1 and "models:/nothing@champion: no such model version" in unknown.stderr
    inside = sh([*run, "--out", str(shots / "restored")], ws)
    assert inside.returncode == 1 and "inside the inputs" in inside.stderr and not (shots / "restored").exists()
    negative = sh([*run, "--out", str(tmp_path / "o3"), "--model-error", "-0.1"], ws)
    assert negative.returncode == 1 and "give values >= 0" in negative.stderr and not (tmp_path / "o3").exists()
    mixed = sh([*run, "--out", str(tmp_path / "o2")], ws)
    assert mixed.returncode == 1 and "broken.png: not a readable image" in mixed.stderr
    assert "p0.png: a 1-channel image" in mixed.stderr and "restored 1 photo(s)" in mixed.stdout
    assert (tmp_path / "o2" / "p1.png").is_file() and not (tmp_path / "o2" / "p0.png").exists()
    assert not [p for p in (tmp_path / "o2").iterdir() if p.name.endswith(".tmp")]  # no half-written file
    np.testing.assert_array_equal(read_image_float(tmp_path / "o2" / "p1.png")[0].shape, (48, 48, 3))
