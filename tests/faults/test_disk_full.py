"""A checkpoint write that runs out of disk: a clear error, the previous checkpoint intact, no
temp file left behind, and the next run resumes from that checkpoint."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from ddmops.data import PatchSampler
from ddmops.errors import TrainingError
from ddmops.io import load_checkpoint
from tests.faults.test_nan import images, run


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, generator, monkeypatch):
    sampler = PatchSampler(images(generator), 8)
    run(tmp_path, sampler, "stop", images=64)  # 16 steps, checkpoints at 4, 8, 12, 16
    before = load_checkpoint(tmp_path / "ckpt.pt")
    assert before["step"] == 16

    real_fsync, calls = os.fsync, []

    def full_disk(fd):
        calls.append(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(TrainingError, match=r"ckpt.pt: could not write the checkpoint \(No space left on device\); "
                                            r"the previous checkpoint is intact"):
        run(tmp_path, sampler, "stop", images=128)  # resumes at 16, fails writing the one at step 20
    assert calls
    monkeypatch.setattr(os, "fsync", real_fsync)

    after = load_checkpoint(tmp_path / "ckpt.pt")
    assert after["step"] == 16 and all(torch.equal(after["model"][k], v) for k, v in before["model"].items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left
    (_, result), _ = run(tmp_path, sampler, "stop", images=128)  # disk freed: goes on from step 16
    assert result.steps == 32
