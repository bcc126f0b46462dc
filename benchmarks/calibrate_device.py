"""A "real device" the platform did not make, calibrated and restored through the CLI alone.

The device is simulated here with a forward model written apart from ddmops/operators: sharp
BSDS500 test photos (or scikit-image's) are decoded to linear intensities (sRGB gamma 2.2),
blurred by a lens (defocus disc x Gaussian, astigmatism and a coma tail growing towards the
corners; one PSF for `deblur`, a smooth field for `psf-grid`, blended from a 5 x 5 grid of PSFs
by scipy), given shot and read noise, re-encoded, quantised to 8 bits and JPEG-compressed
(quality 95), and saved as files. `ddmops calibrate` sees only two folders: those photos and
unrelated sharp ones (BSDS500 train photos). Then `ddmops restore` restores held-out photos of
the device with the learned operator and with the true one (as a PSF file), against the input.

Per case: the learned PSFs against the true ones (NCC at the best shift, per grid cell), the
restorations' PSNR against the sharp photos, and seconds per stage (the device's MLflow runs).

    python benchmarks/calibrate_device.py [--tasks deblur psf-grid] [--params params.yaml]
        [--workdir .bench/calibrate_device]
"""

from __future__ import annotations

import argparse
import io as pyio
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SHARED_DATA, print_table  # noqa: E402

SIDE, GRID = 256, 5  # device photos are SIDE x SIDE; the true field is a GRID x GRID PSF grid
K = 15  # true PSF side


def lens_psf(u: float, v: float, size: int = K) -> np.ndarray:
    """The lens at normalised field position (u, v) in [0, 1]^2: a defocus disc (radius growing
    with the distance from the centre) times a Gaussian, stretched along the radius
    (astigmatism), plus a faint tail outwards (coma). Sums to 1."""
    r = np.hypot(u - 0.5, v - 0.5) / np.hypot(0.5, 0.5)
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size] - c
    angle = np.arctan2(v - 0.5, u - 0.5)
    rad = np.cos(angle) * xx + np.sin(angle) * yy
    tan = -np.sin(angle) * xx + np.cos(angle) * yy
    radius = 1.6 + 2.2 * r ** 2
    disc = ((rad / (1 + 0.6 * r)) ** 2 + tan ** 2 <= radius ** 2).astype(float)
    disc = ndimage.gaussian_filter(disc, 0.7)
    tail = np.exp(-0.5 * (((rad - 2.5 * r) / 2.0) ** 2 + (tan / 1.2) ** 2)) * 0.15 * r
    psf = disc / disc.sum() + tail
    return psf / psf.sum()


def field(grid: int) -> np.ndarray:
    """The true PSF field (grid, grid, K, K) at linspace(0, 1) nodes."""
    nodes = np.linspace(0, 1, grid)
    return np.stack([np.stack([lens_psf(x, y) for x in nodes]) for y in nodes])


def blur_linear(lin: np.ndarray, psfs: np.ndarray) -> np.ndarray:
    """Space-varying blur of a linear image (H, W, 3) by a PSF grid, each output pixel the blend of
    the node blurs with the bilinear weights of its position ('valid': K - 1 pixels smaller)."""
    gy, gx = psfs.shape[:2]
    h, w = lin.shape[0] - K + 1, lin.shape[1] - K + 1
    ys, xs = (np.arange(h) + 0.5 + (K - 1) / 2) / lin.shape[0], (np.arange(w) + 0.5 + (K - 1) / 2) / lin.shape[1]

    def hat(t, n):
        return np.ones((1, t.size)) if n == 1 else np.maximum(0, 1 - np.abs(t[None] * (n - 1) - np.arange(n)[:, None]))
    wy, wx = hat(ys, gy), hat(xs, gx)
    out = np.zeros((h, w, 3))
    for i in range(gy):
        for j in range(gx):
            weight = wy[i][:, None] * wx[j][None, :]
            if weight.max() == 0:
                continue
            blurred = np.stack([signal.fftconvolve(lin[..., c], psfs[i, j], mode="valid") for c in range(3)], -1)
            out += weight[..., None] * blurred
    return out


def device_photo(sharp: np.ndarray, psfs: np.ndarray, rng: np.random.Generator) -> bytes:
    """sRGB uint8 (H, W, 3) -> what the device stores: JPEG bytes of an image K - 1 pixels smaller."""
    lin = (sharp / 255.0) ** 2.2
    blurred = blur_linear(lin, psfs)
    noisy = blurred + np.sqrt(0.0004 * blurred + 0.00002) * rng.standard_normal(blurred.shape)  # shot + read
    encoded = np.clip(noisy, 0, 1) ** (1 / 2.2)
    buffer = pyio.BytesIO()
    Image.fromarray(np.round(encoded * 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def photos(split: str, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n sharp SIDE + K - 1 px crops of photos (BSDS500 when there, else scikit-image's)."""
    side = SIDE + K - 1
    if (SHARED_DATA / "bsds500").is_dir():
        files = sorted((SHARED_DATA / "bsds500" / split).glob("*.jpg"))
        images = [np.asarray(Image.open(f).convert("RGB")) for f in files[:n]]
    else:
        import skimage.data
        names = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"]
        images = [getattr(skimage.data, name)() for name in names] * (n // len(names) + 1)
    out = []
    for img in images[:n]:
        r, c = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        out.append(img[r:r + side, c:c + side])
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def ncc_best_shift(a: np.ndarray, b: np.ndarray, shift: int = 3) -> float:
    size = max(a.shape[-1], b.shape[-1]) + 2 * shift
    pa, pb = (np.pad(k, (size - k.shape[-1]) // 2) for k in (a, b))
    return max(float((np.roll(pa, (i, j), (0, 1)) * pb).sum() / np.linalg.norm(pa) / np.linalg.norm(pb))
               for i in range(-shift, shift + 1) for j in range(-shift, shift + 1))


def stage_seconds(store: Path, since: float) -> dict[str, float]:
    """Durations of the stage runs (in the workspace's store) that started after ``since`` (epoch s)."""
    con = sqlite3.connect(store)
    rows = con.execute("select t.value, r.start_time, r.end_time from runs r join tags t on t.run_uuid = r.run_uuid "
                       "where t.key = 'ddmops.stage' and r.end_time is not null and r.start_time >= ?",
                       (int(since * 1000),)).fetchall()
    con.close()
    return {stage: (end - start) / 1000 for stage, start, end in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["deblur", "psf-grid"])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--workdir", default=str(ROOT / ".bench" / "calibrate_device"))
    ap.add_argument("--observed", type=int, default=24, help="device photos to calibrate with")
    ap.add_argument("--clean", type=int, default=40, help="unrelated sharp photos")
    ap.add_argument("--test", type=int, default=4, help="held-out device photos to restore")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    ws = work / "ws"
    ws.mkdir(parents=True)
    shutil.copy(args.params, ws / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
    for name in ("source", "observed"):
        (ws / "data" / name).mkdir(parents=True)
        shutil.copy(ROOT / "data" / name / "README.md", ws / "data" / name / "README.md")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"]):
        run(*cmd)
    clean_dir = work / "clean"
    clean_dir.mkdir()
    for i, img in enumerate(photos("train", args.clean, rng)):
        Image.fromarray(img).save(clean_dir / f"clean{i:03d}.png")
    sharp = photos("test", args.observed + args.test, rng)
    rows, summary = [], []
    for task in args.tasks:
        psfs = field(GRID) if task == "psf-grid" else lens_psf(0.85, 0.3)[None, None]
        observed, held = work / task / "observed", work / task / "held"
        for folder, images in ((observed, sharp[:args.observed]), (held, sharp[args.observed:])):
            folder.mkdir(parents=True)
            for i, img in enumerate(images):
                (folder / f"shot{i:03d}.jpg").write_bytes(device_photo(img, psfs, rng))
        name = f"dev-{task}"
        t0, started = time.perf_counter(), time.time()
        options = ["--grid", str(GRID), str(GRID)] if task == "psf-grid" else []
        run("ddmops", "calibrate", "--name", name, "--task", task, "--observed", str(observed), "--clean",
            str(clean_dir), "--kernel-size", str(K), *options, "--promote")
        calibrate_s = time.perf_counter() - t0
        from ddmops.operators.psf_operator import PsfOperator
        learned = PsfOperator.load(ws / "devices" / name / "models" / "operator" / task.replace("-", "_"))
        truth_file = work / task / "truth.npy"
        np.save(truth_file, psfs if task == "psf-grid" else psfs[0, 0])
        from ddmops.operators.psf_operator import PsfGridKernels
        nodes = learned.psfs_at_nodes_of(PsfGridKernels(field(GRID))) if task == "psf-grid" else learned.psfs()
        nccs = [ncc_best_shift(e.numpy(), t) for e, t in zip(nodes, psfs.reshape(-1, K, K))]
        prior = f"devices/{name}/models/priors/clean/prior.safetensors"
        scores = {}
        for label, operator in (("learned", f"models:/ddmops-psf-{name}@champion"), ("true", str(truth_file))):
            t0 = time.perf_counter()
            run("ddmops", "restore", str(held), "--operator", operator, "--prior", prior, "--out",
                str(work / task / label), "--no-progress")
            seconds = time.perf_counter() - t0
            vals = []
            for i, img in enumerate(sharp[args.observed:]):
                out = np.asarray(Image.open(work / task / label / f"shot{i:03d}.png").convert("RGB")) / 255.0
                r = (K - 1) // 2
                vals.append(psnr(out, img[r:r + SIDE, r:r + SIDE] / 255.0))
            scores[label] = (float(np.mean(vals)), seconds)
        inputs = [psnr(np.asarray(Image.open(held / f"shot{i:03d}.jpg").convert("RGB")) / 255.0,
                       img[(K - 1) // 2:(K - 1) // 2 + SIDE, (K - 1) // 2:(K - 1) // 2 + SIDE] / 255.0)
                  for i, img in enumerate(sharp[args.observed:])]
        stages = stage_seconds(ws / "mlruns.db", started)
        rows.append([task, float(np.mean(nccs)), float(np.min(nccs)), float(np.mean(inputs)), scores["learned"][0],
                     scores["true"][0], calibrate_s, scores["learned"][1],
                     ", ".join(f"{k} {v:.0f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])[:4])])
        summary.append(f"{task}: learned {scores['learned'][0] - np.mean(inputs):+.2f} dB over the input, "
                       f"{scores['learned'][0] - scores['true'][0]:+.2f} dB against the true operator")
        print(f"case {task}: " + ", ".join(str(v) for v in rows[-1]), flush=True)
    print_table(f"Calibrating a simulated device ({Path(args.params).name}; {args.observed} photos of {SIDE} px, "
                f"{args.clean} clean; {args.test} restored)",
                ["task", "NCC mean", "NCC worst cell", "PSNR input", "PSNR learned", "PSNR true", "calibrate s",
                 "restore s", "longest stages (s)"], rows,
                "calibrate_device: " + "; ".join(summary) + " (goals: learned above the input; within 1 dB of the "
                "true operator with the GPU profile)", width=200)


if __name__ == "__main__":
    main()
