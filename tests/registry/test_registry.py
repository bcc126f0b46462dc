"""log -> register -> alias -> load, the promotion gate, and operators named by URI in stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddmops.config import GateConfig, InvertConfig, Paths, TaskConfig, TaskOperatorConfig
from ddmops.data import save_image_set
from ddmops.errors import DdmopsError
from ddmops.io import save_npz
from ddmops.operators.psf_grid import PsfGrid
from ddmops.operators.psf_operator import BlurKernel, PsfGridKernels
from ddmops.ops.serving import ServedOperator
from ddmops.tracker import NullTracker
from ddmops.ops.workspace import Workspace
from pipelines import restore
from pipelines.context import StageContext
from pipelines.invert import learned_operator
from pipelines.restore import RestoreJob
from tests.registry.conftest import kernel, log_version, psf_grid

NAME = "ddmops-psf-deblur"


def test_log_register_alias_load_returns_the_runs_arrays(store, tmp_path):
    import mlflow

    from ddmops.ops.registry import fetch_operator, log_operator, promote
    op = BlurKernel(kernel())
    with mlflow.start_run(tags={"ddmops.data.data/degraded/deblur": "feed.dir"}) as run:
        op.save(tmp_path / "operator" / "operator.npz")
        mlflow.log_artifacts(str(tmp_path / "operator"), "operator")  # as learn-operator logs it
        mv = log_operator(op, task="deblur", metrics={"kernel/ncc": 0.9}, training_data="data/degraded/deblur")
    assert (mv.name, str(mv.version), mv.aliases, mv.run_id) == (NAME, "1", ["candidate"], run.info.run_id)
    assert mv.tags["ddmops.data_hash"] == "feed.dir" and mv.tags["ddmops.metric.kernel/ncc"] == "0.9"
    assert promote("deblur", GateConfig()).outcome == "promoted"

    got, tags = fetch_operator(f"models:/{NAME}@champion")
    from_run, _ = fetch_operator(f"runs:/{run.info.run_id}/operator")
    assert isinstance(got, BlurKernel)
    np.testing.assert_array_equal(got.kernel, op.kernel)
    np.testing.assert_array_equal(got.kernel, from_run.kernel)
    assert tags == {"ddmops.operator": f"models:/{NAME}@champion", "ddmops.operator.model": NAME,
                    "ddmops.operator.version": "1", "ddmops.operator.run_id": run.info.run_id}

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")  # the pyfunc, as a server loads it
    (answer,) = model.predict([{"kind": "psf_at", "x": 0.2, "y": 0.9}])
    np.testing.assert_array_equal(np.array(answer["psf"], np.float32), op.kernel)
    assert model.metadata.signature is not None and model.metadata.saved_input_example_info
    info = model.unwrap_python_model().operator.info
    assert info["data_hash"] == "feed.dir" and info["metrics"] == {"kernel/ncc": 0.9} and info["kernel_size"] == 9
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "dl")))
    names = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
    assert {"artifacts/operator/operator.npz", "artifacts/operator/operator.json", "operator_model.py"} <= set(names)
    assert not any(n.endswith((".pkl", ".pickle", ".cloudpickle")) for n in names)  # nothing pickled


def test_gate_refuses_worse_and_accepts_better(store):
    import mlflow

    from ddmops.ops.registry import promote
    client = mlflow.MlflowClient()

    def champion() -> str:
        return str(client.get_model_version_by_alias(NAME, "champion").version)

    gate = GateConfig(metric="kernel/ncc", mode="max", min_delta=0.02)
    log_version(BlurKernel(kernel()), {"kernel/ncc": 0.80, "loss/dm": 1.0})
    assert promote("deblur", gate).outcome == "promoted" and champion() == "1"  # the first champion
    assert promote("deblur", gate).outcome == "unchanged"

    log_version(BlurKernel(kernel()), {"kernel/ncc": 0.70, "loss/dm": 0.5})
    d = promote("deblur", gate)
    assert d.outcome == "refused" and (d.version, d.previous) == ("2", "1") and champion() == "1"
    assert "0.7 does not beat champion v1's 0.8" in d.message
    assert client.get_model_version(NAME, "2").tags["ddmops.gate"].startswith("refused:")
    # the same candidate wins under a gate on loss/dm (lower is better)
    assert promote("deblur", GateConfig(metric="loss/dm", mode="min")).outcome == "promoted" and champion() == "2"

    log_version(BlurKernel(kernel()), {"kernel/ncc": 0.81, "loss/dm": 0.4})
    assert promote("deblur", gate, version="1").outcome == "promoted"  # back to v1: 0.8 > 0.7 + 0.02
    assert promote("deblur", gate).outcome == "refused"  # v3: 0.81 is not 0.02 above 0.8
    assert promote("deblur", GateConfig(min_delta=0.005)).outcome == "promoted" and champion() == "3"
    tags = client.get_model_version(NAME, "3").tags
    assert tags["ddmops.previous_champion"] == "1" and tags["ddmops.gate"].startswith("promoted:")

    with pytest.raises(DdmopsError, match="--force needs --reason"):
        promote("deblur", gate, version="2", force=True)
    d = promote("deblur", gate, version="2", force=True, reason="rollback: v3 rings on real photos")
    assert d.outcome == "promoted" and champion() == "2"
    assert client.get_model_version(NAME, "2").tags["ddmops.force_reason"] == "rollback: v3 rings on real photos"
    with pytest.raises(DdmopsError, match="has no metric 'psnr/restored' .*kernel/ncc, loss/dm"):
        promote("deblur", GateConfig(metric="psnr/restored"), version="3")


def test_invert_takes_a_model_uri_and_records_the_version(store, tmp_path):
    from ddmops.ops.registry import promote
    mv = log_version(BlurKernel(kernel()), {"kernel/ncc": 0.9})
    promote("deblur", GateConfig())
    ctx = StageContext(ws=Workspace(tmp_path, Paths()))
    op, tags = learned_operator(InvertConfig(operator=f"models:/{NAME}@champion"), ctx, "deblur")
    np.testing.assert_array_equal(op.kernel, kernel())
    assert tags["ddmops.operator.version"] == "1" and tags["ddmops.operator.run_id"] == mv.run_id
    _, tags = learned_operator(InvertConfig(operator=f"models:/{NAME}/1"), ctx, "deblur")
    assert tags["ddmops.operator.version"] == "1"

    with pytest.raises(DdmopsError) as info:
        learned_operator(InvertConfig(operator=f"models:/{NAME}@best"), ctx, "deblur")
    assert str(info.value).startswith(f"models:/{NAME}@best: no such model version") and "\n" not in str(info.value)
    with pytest.raises(DdmopsError, match="models:/ddmops-nothing/3: no such model version"):
        learned_operator(InvertConfig(operator="models:/ddmops-nothing/3"), ctx, "deblur")
    with pytest.raises(DdmopsError, match="runs:/0123456789abcdef/operator: cannot download"):
        learned_operator(InvertConfig(operator="runs:/0123456789abcdef/operator"), ctx, "deblur")


class TagTracker(NullTracker):
    """Keeps the tags a stage sets."""

    def __init__(self):
        super().__init__()
        self.tags: dict[str, str] = {}

    def set_tags(self, tags):
        self.tags.update(tags)


def test_dcdp_takes_a_model_uri_and_records_the_version(store, tmp_path):
    from ddmops.ops.registry import promote
    grid = psf_grid(2, 2)
    mv = log_version(PsfGridKernels(grid), {"kernel/ncc": 0.5}, task="psf_grid")
    promote("psf_grid", GateConfig())
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    geometry = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)  # each image is a whole field
    save_npz(tmp_path / "data" / "prepared" / "test_clean.npz", save_image_set(list(x), quantise=False,
                                                                              geometry=geometry))
    source = TaskOperatorConfig(kind="learned", source="models:/ddmops-psf-grid@champion")
    job = RestoreJob(images=2, batch_size=2, seed=0, task=TaskConfig(operator=source, noise_sigma=0.0))
    ctx = StageContext(ws=Workspace(tmp_path, Paths()), tracker=TagTracker())
    p = restore.problem(job, ctx)
    assert isinstance(p.op, PsfGrid)
    np.testing.assert_array_equal(p.op.grid.numpy(), grid)
    for xi, yi in zip(x, p.y):  # noise-free measurements: the served operator's answer for each image
        served = ServedOperator(PsfGridKernels(grid)).apply(xi.permute(1, 2, 0).numpy())
        np.testing.assert_allclose(yi.permute(1, 2, 0).numpy(), served, atol=1e-6)
    expected = {"ddmops.operator": "models:/ddmops-psf-grid@champion", "ddmops.operator.model": "ddmops-psf-grid",
                "ddmops.operator.version": "1", "ddmops.operator.run_id": mv.run_id}
    assert ctx.tracker.tags == expected
