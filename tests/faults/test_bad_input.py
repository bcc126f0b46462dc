"""Bad input: a one-line error naming the file or key, exit 1, and no half-written output."""

from __future__ import annotations

import numpy as np
import pytest

from ddmops.io import save_png
from tests.test_pipeline import sh


@pytest.mark.parametrize("make, fragment", [
    (lambda d: (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"), "bad.png: not a readable image"),
    (lambda d: None, "need at least 2 images"),
    (lambda d: save_png(d / "tiny.png", np.zeros((8, 8, 3), np.uint8)), "smaller than"),
])
def test_prepare_refuses_bad_folders(tiny_workspace, make, fragment):
    src = tiny_workspace / "data" / "source" / "photos"
    src.mkdir()
    save_png(src / "ok.png", np.full((120, 100, 3), 90, np.uint8))
    make(src)
    done = sh(["ddmops", "run", "prepare", "--set", "prepare.source=folder"], tiny_workspace)
    assert done.returncode == 1 and fragment in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2 and "Traceback" not in done.stderr
    assert not (tiny_workspace / "data" / "prepared").exists()  # nothing half written


def test_mistyped_and_wrongly_typed_params(tiny_workspace):
    for override, fragment in (("train_prior.clean.batchsize=4", "did you mean 'train_prior.clean.batch_size'"),
                               ("degrade.deblur.size=4", "odd"), ("invert.deblur.pnp.iterations=many", "expected an integer")):
        done = sh(["ddmops", "run", "prepare", "--set", override], tiny_workspace)
        assert done.returncode == 1 and fragment in done.stderr and "Traceback" not in done.stderr


def test_wrong_operator_file(tiny_workspace):
    np.save(tiny_workspace / "k.npy", np.ones((4, 4)))
    done = sh(["ddmops", "run", "invert", "--task", "deblur", "--set", "invert.deblur.operator=k.npy"], tiny_workspace)
    assert done.returncode == 1 and "k.npy" in done.stderr and "Traceback" not in done.stderr
