"""Latency of PSF-at-position requests: a served operator (`mlflow models serve`, keep-alive
HTTP) next to the same call in-process, p50/p99 over N requests at random field positions.

    python benchmarks/serve_latency.py                      # an 8 x 8 grid of 27 x 27 PSFs, temporary store
    python benchmarks/serve_latency.py --params params.yaml --task deblur --alias champion

Prints one table and a last summary line; the goal is p99 < 20 ms served, on CPU.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np

GOAL_P99_MS = 20.0


def demo_store(root: Path) -> tuple[str, str]:
    """A store holding one psf_grid version (8 x 8 Gaussians of 27 x 27, widening to the corners)."""
    import mlflow

    from ddmops.operators.kernels import gaussian_kernel
    from ddmops.operators.psf_operator import PsfGridKernels
    from ddmops.ops.registry import log_operator
    from ddmops.ops.tracking import use_tracking
    uri = f"sqlite:///{root / 'mlruns.db'}"
    use_tracking(uri)
    exp = mlflow.create_experiment("bench", artifact_location=(root / "mlruns").as_uri())
    grid = np.stack([np.stack([gaussian_kernel(27, (1 + 0.4 * abs(j - 3.5), 1 + 0.4 * abs(i - 3.5)), 10.0 * i).numpy()
                               for j in range(8)]) for i in range(8)])
    with mlflow.start_run(experiment_id=exp):
        mv = log_operator(PsfGridKernels(grid), task="psf_grid")
    return uri, f"models:/{mv.name}/{mv.version}"


def timed(call: Callable[[dict], object], positions: np.ndarray, warmup: int) -> np.ndarray:
    """Milliseconds per call, after ``warmup`` untimed calls."""
    requests = [{"kind": "psf_at", "x": float(x), "y": float(y)} for x, y in positions]
    for r in requests[:warmup]:
        call(r)
    out = []
    for r in requests:
        t0 = time.perf_counter()
        call(r)
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def http_caller(url: str) -> Callable[[dict], object]:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)  # one keep-alive connection

    def call(request: dict) -> object:
        conn.request("POST", "/invocations", json.dumps({"inputs": [request]}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:300]!r}")
        return body
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, help="a workspace's params.yaml (default: a temporary demo store)")
    ap.add_argument("--task", default="deblur")
    ap.add_argument("--alias", default="champion")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()

    import mlflow

    from ddmops.ops.model_server import running_server
    from ddmops.ops.registry import model_name, model_version
    from ddmops.ops.tracking import default_tracking_uri, use_tracking

    with tempfile.TemporaryDirectory() as tmp:
        if args.params:
            tracking = default_tracking_uri(args.params.resolve().parent)
            use_tracking(tracking)
            mv = model_version(f"models:/{model_name(args.task)}@{args.alias}")
            model_uri = f"models:/{mv.name}/{mv.version}"
        else:
            tracking, model_uri = demo_store(Path(tmp))
        positions = np.random.default_rng(0).random((args.requests, 2))
        model = mlflow.pyfunc.load_model(model_uri)
        operator = model.unwrap_python_model().operator
        rows = {
            "in-process psf_at (numpy)": timed(lambda r: operator.psf_at(r["x"], r["y"]), positions, args.warmup),
            "in-process pyfunc.predict": timed(lambda r: model.predict([r]), positions, args.warmup),
        }
        with running_server(model_uri, tracking) as url:
            rows["served, HTTP keep-alive"] = timed(http_caller(url), positions, args.warmup)

    d = operator.describe()
    (gy, gx), k = d["grid_shape"], d["kernel_size"]
    print(f"\nPSF-at-position latency: {model_uri} ({d['family']}, {gy} x {gx} PSFs of {k} x {k}), "
          f"{args.requests} requests after {args.warmup} warm-up\n")
    print(f"| {'path':28s} | {'p50 ms':>8s} | {'p99 ms':>8s} | {'mean ms':>8s} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, ms in rows.items():
        print(f"| {name:28s} | {np.percentile(ms, 50):8.3f} | {np.percentile(ms, 99):8.3f} | {ms.mean():8.3f} |")
    served, local = rows["served, HTTP keep-alive"], rows["in-process pyfunc.predict"]
    p99 = np.percentile(served, 99)
    verdict = "met" if p99 < GOAL_P99_MS else "MISSED"
    print(f"\nsummary: served p50 {np.percentile(served, 50):.2f} ms, p99 {p99:.2f} ms vs in-process p99 "
          f"{np.percentile(local, 99):.2f} ms; goal p99 < {GOAL_P99_MS:g} ms: {verdict}")


if __name__ == "__main__":
    main()
