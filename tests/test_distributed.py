"""Two gloo processes under torchrun follow the loss curve of one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddmops.loop.distributed import Dist
from tests.ddp_worker import train

ROOT = Path(__file__).resolve().parents[1]


def test_shards_partition_the_batch():
    parts = [Dist(rank=r, world=4).shard(8) for r in range(4)]
    assert [list(range(8))[p] for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="evenly"):
        Dist(rank=0, world=3).shard(8)


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    single = train(tmp_path / "single")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((tmp_path / "losses.json").read_text())
    assert len(ddp) == len(single) == 8
    assert ddp == pytest.approx(single, rel=1e-4, abs=1e-6)
