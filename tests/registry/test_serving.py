"""Requests to an operator, answered in-process (no MLflow): each kind, each bad payload."""

from __future__ import annotations

import numpy as np
import pytest

from ddmops.operators.psf_operator import BlurKernel, PsfGridKernels
from ddmops.ops.serving import Limits, RequestError, ServedOperator, handle, redact
from tests.registry.conftest import kernel, psf_grid

GRID = ServedOperator(PsfGridKernels(psf_grid(3, 4)), limits=Limits(max_image_side=32, max_requests=4))


def test_each_kind_is_answered():
    image = np.arange(10 * 12, dtype=float).reshape(10, 12)
    psf, grid, applied, info = handle(GRID, [{"kind": "psf_at", "x": 1 / 3, "y": 1.0}, {"kind": "grid"},
                                             {"kind": "apply", "image": image.tolist()}, {"kind": "info"}])
    np.testing.assert_array_equal(np.array(psf["psf"], np.float32), GRID.grid[2, 1])
    assert (psf["x"], psf["y"]) == (1 / 3, 1.0)
    np.testing.assert_array_equal(np.array(grid["grid"], np.float32), GRID.grid)
    assert grid["x_nodes"] == [0, 1 / 3, 2 / 3, 1] and grid["y_nodes"] == [0, 0.5, 1]
    np.testing.assert_array_equal(np.array(applied["image"]), GRID.apply(image))
    assert info["family"] == "psf_grid" and info["grid_shape"] == [3, 4] and info["limits"]["max_image_side"] == 32
    assert handle(GRID, []) == []


def test_a_blur_answers_its_kernel_anywhere():
    op = ServedOperator(BlurKernel(kernel()))
    (answer,) = handle(op, [{"kind": "psf_at", "x": 0.91, "y": 0}])
    np.testing.assert_array_equal(np.array(answer["psf"], np.float32), kernel())


@pytest.mark.parametrize("request_, message", [
    ({"x": 0.5, "y": 0.5}, "missing field 'kind'"),
    ({"kind": "psf"}, "unknown kind 'psf'"),
    ({"kind": "psf_at", "x": 0.5}, "needs field 'y'"),
    ({"kind": "psf_at", "x": 1.5, "y": 0.5}, "field 'x' = 1.5 lies outside [0, 1]"),
    ({"kind": "psf_at", "x": 0.5, "y": -0.1}, "field 'y' = -0.1 lies outside"),
    ({"kind": "psf_at", "x": "0.5", "y": 0.5}, "field 'x' must be a number"),
    ({"kind": "psf_at", "x": True, "y": 0.5}, "field 'x' must be a number"),
    ({"kind": "grid", "x": 0.5}, "unknown field 'x' for kind 'grid'"),
    ({"kind": "apply", "image": [1.0] * 12}, "must be a 2-D (H, W) or 3-D (H, W, C) array"),
    ({"kind": "apply", "image": [[[[1.0]]]]}, "must be a 2-D (H, W) or 3-D (H, W, C) array"),
    ({"kind": "apply", "image": [[0.0] * 40] * 8}, "is 8 x 40, larger than the limit of 32 x 32"),
    ({"kind": "apply", "image": [[[0.0] * 4] * 12] * 12}, "has 4 channels"),
    ({"kind": "apply", "image": [[0.0] * 5] * 5}, "smaller than the 7 x 7 PSF"),
    ({"kind": "apply", "image": [[0.0] * 12] * 11 + [[0.0] * 3]}, "ragged"),
    ({"kind": "apply", "image": [["a"] * 12] * 12}, "numbers only, found text"),
    ({"kind": "apply", "image": [[True] * 12] * 12}, "numbers only, found true/false"),
    ({"kind": "apply", "image": [[float("nan")] * 12] * 12}, "NaN or infinite"),
    (7, "expected an object"),
])
def test_bad_requests_name_the_problem(request_, message):
    with pytest.raises(RequestError) as info:
        handle(GRID, [{"kind": "info"}, request_])
    assert str(info.value).startswith("request 1: ") and message in str(info.value)


def test_too_many_requests_and_not_a_list():
    with pytest.raises(RequestError, match="5 requests in one call, more than the limit of 4"):
        handle(GRID, [{"kind": "info"}] * 5)
    with pytest.raises(RequestError, match="expected a list of requests, got dict"):
        handle(GRID, {"kind": "info"})


def test_redact_cuts_images_in_place():
    image = [[0.0] * 300] * 200
    requests = [{"kind": "apply", "image": image}, {"kind": "info"}]
    redact(requests)
    assert image == ["<200 x 300 array, not echoed>"] and requests[1] == {"kind": "info"}
