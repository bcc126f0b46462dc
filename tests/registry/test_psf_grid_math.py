"""Bilinear PSF interpolation: exact at the nodes, linear between them, clipped and renormalised."""

from __future__ import annotations

import numpy as np
import pytest

from ddmops.operators.psf_grid_math import grid_nodes, hat_weights, psf_at
from tests.registry.conftest import psf_grid


def test_exact_at_every_node():
    grid = psf_grid(3, 4)
    for i, y in enumerate(grid_nodes(3)):
        for j, x in enumerate(grid_nodes(4)):
            np.testing.assert_array_equal(psf_at(grid, x, y), grid[i, j])
    np.testing.assert_array_equal(psf_at(grid, 0.3 * 10 / 9, 0.5), grid[1, 1])  # 1/3 as a decimal product


def test_linear_between_nodes():
    grid = psf_grid(3, 4).astype(np.float64)
    grid /= grid.sum((2, 3), keepdims=True)  # sums of 1 in float64: the renormalisation changes nothing
    x0, x1 = grid_nodes(4)[1:3]
    for t in (0.25, 0.5, 0.9):
        np.testing.assert_allclose(psf_at(grid, x0 + t * (x1 - x0), 0.0), (1 - t) * grid[0, 1] + t * grid[0, 2],
                                   rtol=0, atol=1e-15)
    # bilinear in a cell: the mean of the four corners at its centre
    centre = psf_at(grid, (x0 + x1) / 2, 0.25)
    np.testing.assert_allclose(centre, grid[:2, 1:3].mean((0, 1)), rtol=0, atol=1e-15)


def test_one_node_axes_and_a_single_kernel():
    grid = psf_grid(1, 3)
    np.testing.assert_array_equal(psf_at(grid, 0.5, 0.123), grid[0, 1])
    single = psf_grid(1, 1)
    np.testing.assert_array_equal(psf_at(single, 0.77, 0.01), single[0, 0])


def test_clipped_at_zero_and_renormalised():
    grid = np.zeros((1, 2, 3, 3))
    grid[0, 0, 1, 1], grid[0, 0, 0, 0] = 1.5, -0.5  # a node with a negative lobe
    grid[0, 1, 1, 1] = 1.0
    out = psf_at(grid, 0.5, 0.0)  # blend: centre 1.25, corner -0.25 -> clipped to 0, renormalised
    expected = np.zeros((3, 3))
    expected[1, 1] = 1.0
    np.testing.assert_allclose(out, expected, atol=1e-15)


def test_hat_weights_sum_to_one_and_outside_is_refused():
    w = hat_weights(5, np.linspace(0, 1, 37))
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-15)
    assert (w >= 0).all()
    with pytest.raises(ValueError, match="outside"):
        psf_at(psf_grid(2, 2), 1.01, 0.5)


def test_agrees_with_the_torch_psf_grid_operator():
    import torch

    from ddmops.operators.psf_grid import psf_at as torch_psf_at
    grid = psf_grid(3, 4)
    pos = np.random.default_rng(0).random((50, 2))
    expected = torch_psf_at(torch.from_numpy(grid).double(), torch.from_numpy(pos)).numpy()
    for (x, y), want in zip(pos, expected):
        np.testing.assert_allclose(psf_at(grid, x, y), want, rtol=0, atol=1e-7)
