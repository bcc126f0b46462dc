"""Calibrated devices: a camera, lens or microscope whose operator is learned from its own photos.

Each device is a workspace of its own, ``<workspace>/devices/<name>/``, beside the synthetic
pipeline and beside other devices: its photos (``data/observed``, what the device took;
``data/clean``, unrelated sharp photos at the same pixel scale), both DVC-tracked, its
``params.yaml`` (the parent's, with the device's task, kernel size, grid or factor, its folders
and its registry name) and its ``dvc.yaml`` (the parent's stages for that task: prepare, degrade
(which cuts the real observations), the two priors, learn-operator, invert, evaluate). `dvc repro
devices/<name>/dvc.yaml` runs it, cached, recorded in its ``dvc.lock``; runs go to the parent's
MLflow store (``tracking.root``), and the operator registers as ``ddmops-psf-<name>``
(``ddmops-sr-<name>`` for an SR kernel) with the unsupervised gate ``score/observation_gap``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from ddmops.errors import DataError, DdmopsError
from ddmops.io import list_images, read_image_float, write_json

DEVICES = "devices"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
STAGES = ("prepare", "degrade", "train-prior-clean", "train-prior", "learn-operator", "invert", "evaluate")
DEVICE_FILE = "device.json"


@dataclass(frozen=True)
class DeviceSpec:
    """What `ddmops calibrate` is asked for."""

    name: str
    task: str  # deblur, psf_grid or sr_kernel
    observed: Path
    clean: Path
    kernel_size: int | None = None
    grid: tuple[int, int] | None = None
    factor: int | None = None
    noise_sigma: float | None = None  # None: estimated from the observations


def folder(root: Path, name: str) -> Path:
    return Path(root) / DEVICES / name


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise DdmopsError(f"--name {name!r}: a device name is lower-case letters, digits, '-' and '_' "
                          "(at most 63, starting with a letter or digit), e.g. lens-a")
    return name


def _survey(path: Path, what: str) -> tuple[int, set[tuple[int, int]], int]:
    """(images, their sizes, channel count) of a folder, every file read; errors name the file."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{what} {path}: folder not found")
    files = list_images(path)
    if len(files) < 2:
        raise DataError(f"{what} {path}: need at least 2 images, found {len(files)}")
    sizes, channels = set(), set()
    for f in files:
        x, _ = read_image_float(f, channels=0)  # 0: keep the file's own channel count
        sizes.add(x.shape[:2])
        channels.add(x.shape[2])
    if len(channels) > 1:
        raise DataError(f"{what} {path}: mixes grey and colour images")
    return len(files), sizes, channels.pop()


def check_inputs(spec: DeviceSpec, patch: int, tile: int) -> int:
    """Refuse what cannot be calibrated, before anything is written; -> the channel count.
    ``patch``: the observation prior's patch size; ``tile``: the observations' tile side."""
    check_name(spec.name)
    n_obs, obs_sizes, obs_channels = _survey(spec.observed, "--observed")
    _, clean_sizes, clean_channels = _survey(spec.clean, "--clean")
    if len(obs_sizes) > 1:
        raise DataError(f"--observed {spec.observed}: images of one device share one size, found "
                        f"{', '.join('x'.join(map(str, s)) for s in sorted(obs_sizes))} (crop alike, never resize)")
    if obs_channels != clean_channels:
        raise DataError(f"--clean {spec.clean} holds {clean_channels}-channel images, --observed {spec.observed} "
                        f"{obs_channels}-channel ones: they must match")
    h, w = obs_sizes.pop()
    kernel = spec.kernel_size or 0
    if min(h, w) < max(kernel, tile):
        raise DataError(f"--observed {spec.observed}: images of {h}x{w} are smaller than "
                        f"{'the kernel (' + str(kernel) + ' px)' if kernel >= tile else f'a {tile} px tile'}")
    tiles = (n_obs - max(1, round(0.2 * n_obs))) * (h // tile) * (w // tile)
    if tile < patch or tiles < 8:
        raise DataError(f"--observed {spec.observed}: too few observations for {patch} px patches "
                        f"({tiles} tiles of {tile} px; need at least 8)")
    if min(min(s) for s in clean_sizes) < tile:
        raise DataError(f"--clean {spec.clean}: images smaller than a {tile} px tile")
    return obs_channels


def device_params(base: dict, spec: DeviceSpec, channels: int) -> dict:
    """The device's params: the parent's, pointed at the device's folders, task and registry name."""
    p = yaml.safe_load(yaml.safe_dump(base))
    p["paths"] = {**p.get("paths", {}), "source": "data/clean", "observed": "data/observed"}
    p.setdefault("tracking", {})["root"] = os.path.relpath(".", Path(DEVICES) / spec.name)
    p["prepare"] = {**p.get("prepare", {}), "source": "folder", "channels": channels, "max_side": 100000,
                    "clean_fraction": 0.9}  # the clean photos' pixel scale is the device's: never downscaled
    degrade = p.setdefault("degrade", {})
    degrade.setdefault(spec.task, {})["observed"] = "data/observed"
    degrade.setdefault("observations", {})["noise_sigma"] = spec.noise_sigma
    learn = p.setdefault("learn_operator", {}).setdefault(spec.task, {})
    learn.update({"init": "spectral", "device": spec.name})
    learn.setdefault("reg", {}).setdefault("spectral", 1.0)
    for key, value in (("kernel_size", spec.kernel_size), ("grid", list(spec.grid) if spec.grid else None),
                       ("factor", spec.factor)):
        if value is not None:
            learn[key] = value
    p.setdefault("registry", {})[spec.task] = {"metric": "score/observation_gap", "mode": "min", "min_delta": 0.0}
    p.pop("tune", None)
    return p


def device_pipeline(base: dict, task: str) -> dict:
    """The parent's dvc.yaml reduced to one task's stages, with progress bars shown."""
    out = {"stages": {}}
    for name, stage in base["stages"].items():
        if name not in STAGES:
            continue
        stage = yaml.safe_load(yaml.safe_dump(stage))
        body = stage.get("do", stage)
        if "foreach" in stage:
            stage["foreach"] = [task]
        body["cmd"] = body["cmd"].replace(" --no-progress", "")
        for plot in body.get("plots", []):
            for spec in (plot.values() if isinstance(plot, dict) else []):
                if isinstance(spec, dict) and spec.get("y") == "psnr":
                    spec["y"] = "residual"  # no truth: the restorations' data residual per image
        out["stages"][name] = stage
    return out


def create(root: Path, spec: DeviceSpec, params: dict, dvc: Callable[..., subprocess.CompletedProcess]) -> Path:
    """Write the device workspace (copies of both folders, ``params`` (:func:`device_params`),
    dvc.yaml) and `dvc add` the folders; an earlier calibration of the same name is replaced."""
    where = folder(root, spec.name)
    pipeline = yaml.safe_load((Path(root) / "dvc.yaml").read_text())
    data = where / "data"
    for name, source in (("observed", spec.observed), ("clean", spec.clean)):
        target = data / name
        if Path(source).resolve() != target.resolve():
            staging = data / f".{name}.incoming"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    (where / "params.yaml").write_text(f"# device {spec.name!r}, written by `ddmops calibrate`; edit, then "
                                       f"`dvc repro {DEVICES}/{spec.name}/dvc.yaml`\n"
                                       + yaml.safe_dump(params, sort_keys=False))
    (where / "dvc.yaml").write_text(yaml.safe_dump(device_pipeline(pipeline, spec.task), sort_keys=False))
    write_json(where / DEVICE_FILE, {"name": spec.name, "task": spec.task})
    done = dvc("add", str(data / "observed"), str(data / "clean"))
    if done.returncode:
        raise DdmopsError(f"`dvc add` of the device's folders failed: {done.stderr.strip().splitlines()[-1:]}")
    return where


def dvc_runner(root: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``dvc(*args)`` in ``root`` with this interpreter's scripts (ddmops) on PATH; output captured."""
    if not (Path(root) / ".dvc").is_dir():
        raise DdmopsError(f"{root} is not a DVC project: `git init && dvc init` there first")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def dvc(*args: str, stream: bool = False) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "dvc", *args]
        if stream:  # stage by stage, the stages' own progress bars included
            return subprocess.run(cmd, cwd=root, env=env, text=True)
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    return dvc


def task_of(root: Path, name: str) -> str:
    """The task a calibrated device was calibrated for."""
    import json
    path = folder(root, check_name(name)) / DEVICE_FILE
    if not path.is_file():
        raise DdmopsError(f"no calibrated device {name!r} in {Path(root) / DEVICES} "
                          f"(calibrate it: ddmops calibrate --name {name} --task ... --observed DIR --clean DIR)")
    return json.loads(path.read_text())["task"]
