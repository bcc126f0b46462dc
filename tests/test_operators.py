import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddmops.errors import DataError
from ddmops.operators.blur import FFT_MIN_SIDE, Blur, convolve
from ddmops.operators.inpaint import Inpaint, box_mask, random_mask
from ddmops.operators.nonlinear import CameraBlur
from ddmops.operators.phase import PhaseRetrieval
from ddmops.operators.sr import Downsample, bicubic_kernel
from ddmops.operators.kernels import (center_of_mass, gaussian_kernel, load_kernel, motion_kernel,
                                      resize_kernel, validate_kernel)


def linear_operators(g):
    """Every linear operator family, with the image size it accepts (odd where it can)."""
    k = torch.rand(7, 7, generator=g)
    k = k / k.sum()
    wide = torch.rand(13, 13, generator=g)  # applied by FFT
    mask = (torch.rand(2, 1, 37, 31, generator=g) > 0.5).float()
    return [
        (Blur(k, "valid"), (37, 31)), (Blur(k, "reflect"), (37, 31)), (Blur(k, "circular"), (37, 31)),
        (Blur(wide, "valid"), (37, 31)), (Blur(wide, "reflect"), (37, 31)),
        (Downsample(bicubic_kernel(2), 2, "reflect"), (38, 30)), (Downsample(k, 3, "valid"), (37, 31)),
        (Downsample(bicubic_kernel(4), 4, "reflect"), (36, 32)), (Inpaint(mask), (37, 31)),
    ]


@pytest.mark.parametrize("index", range(9))
def test_adjointness_odd_sizes(index, generator):
    """<A x, y> == <x, A^T y> for every linear operator, on odd sizes where it accepts them."""
    op, size = linear_operators(generator)[index]
    op = op.double()
    x = torch.randn(2, 3, *size, generator=generator, dtype=torch.float64)
    ax = op.A(x)
    y = torch.randn(ax.shape, generator=generator, dtype=torch.float64)
    aty = op.A_adjoint(y)
    assert aty.shape == x.shape
    lhs, rhs = (ax * y).sum(), (x * aty).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-10


@pytest.mark.parametrize("op", [PhaseRetrieval(2.0), CameraBlur(torch.full((3, 3), 1 / 9.0), gain=1.3)])
def test_gradcheck_nonlinear(op, generator):
    x = (torch.rand(1, 2, 5, 6, generator=generator, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    op = op.double()
    assert torch.autograd.gradcheck(op.A, (x,), eps=1e-6, atol=1e-6)


def test_phase_retrieval_shape_and_energy(generator):
    x = torch.rand(2, 3, 8, 10, generator=generator) * 2 - 1
    y = PhaseRetrieval(2.0).A(x)
    assert y.shape == (2, 3, 16, 20)
    # unitary FFT: the energy of the magnitudes equals that of the (padded) intensities
    torch.testing.assert_close((y ** 2).sum((-1, -2)), (((x + 1) / 2) ** 2).sum((-1, -2)), rtol=1e-5, atol=1e-5)


def test_camera_blur_saturates():
    op = CameraBlur(torch.ones(1, 1), gain=2.0, sharpness=50.0)
    y = op.A(torch.tensor([-1.0, -0.5, 0.5, 1.0]).reshape(1, 1, 1, 4))
    assert y.max() <= 1.0 and (y[..., 2:] > 0.97).all()  # bright pixels clip at full well
    assert y[0, 0, 0, 1] == pytest.approx(2 * (0.25 * 2.0) ** (1 / 2.2) - 1, abs=1e-3)  # gamma below saturation


def test_bicubic_kernel_and_downsample():
    k = bicubic_kernel(2)
    assert k.shape == (8, 8) and abs(k.sum().item() - 1) < 1e-6
    x = torch.ones(1, 3, 16, 12)
    torch.testing.assert_close(Downsample(k, 2).A(x), torch.ones(1, 3, 8, 6))  # constants are kept


def test_masks(generator):
    m = box_mask(32, 32, (8, 10), generator, margin=2)
    assert m.shape == (1, 32, 32) and (m == 0).sum() == 80
    rows, cols = torch.nonzero(m[0] == 0, as_tuple=True)
    assert rows.min() >= 2 and rows.max() <= 29 and cols.min() >= 2 and cols.max() <= 29
    fractions = [1 - random_mask(64, 64, (0.3, 0.7), generator).mean().item() for _ in range(20)]
    assert 0.25 < min(fractions) and max(fractions) < 0.75 and max(fractions) - min(fractions) > 0.1
    assert random_mask(16, 16, (0.0, 0.0), generator).all()
    with pytest.raises(ValueError, match="probability"):
        random_mask(8, 8, (0.8, 0.2), generator)


def test_valid_blur_matches_direct_convolution(generator):
    """Flipped-kernel convention: y[i, j] = sum_ab k[a, b] x[i + K-1 - a, j + K-1 - b]."""
    k = torch.rand(3, 3, generator=generator)
    x = torch.randn(1, 1, 6, 5, generator=generator)
    y = convolve(x, k, "valid")
    ref = torch.zeros(1, 1, 4, 3)
    for i in range(4):
        for j in range(3):
            for a in range(3):
                for b in range(3):
                    ref[0, 0, i, j] += k[a, b] * x[0, 0, i + 2 - a, j + 2 - b]
    torch.testing.assert_close(y, ref)


def test_per_image_kernels(generator):
    x = torch.randn(2, 3, 12, 12, generator=generator)
    ks = torch.rand(2, 5, 5, generator=generator)
    out = convolve(x, ks)
    for b in range(2):
        torch.testing.assert_close(out[b:b + 1], convolve(x[b:b + 1], ks[b]))


@pytest.mark.parametrize("padding", ["valid", "reflect", "circular"])
def test_fft_convolution_matches_direct(padding, generator):
    """Wide kernels go through the FFT: same values and gradients as direct convolution,
    for a shared kernel and for one kernel per image."""
    side = FFT_MIN_SIDE + 2
    x = torch.randn(2, 3, 23, 19, generator=generator, dtype=torch.float64, requires_grad=True)
    for k in (torch.rand(side, side, generator=generator, dtype=torch.float64),
              torch.rand(2, side, side, generator=generator, dtype=torch.float64)):
        k.requires_grad_(True)
        xp = F.pad(x, (side // 2,) * 4, mode=padding) if padding != "valid" else x
        w = k.flip(-1, -2).reshape(-1, 1, side, side)
        ref = torch.cat([F.conv2d(xp[i:i + 1], w[i % len(w)].expand(3, 1, side, side), groups=3) for i in range(2)])
        out = convolve(x, k, padding)
        torch.testing.assert_close(out, ref)
        grads = torch.autograd.grad((out * ref.detach()).sum(), (x, k))
        ref_grads = torch.autograd.grad((ref * ref.detach()).sum(), (x, k))
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)


def test_blur_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        Blur(torch.ones(4, 4) / 16)


@pytest.mark.parametrize("make", [
    lambda g: gaussian_kernel(9, (1.5, 1.5)),
    lambda g: gaussian_kernel(15, (3.0, 1.0), angle=30.0),
    lambda g: motion_kernel(15, 0.5, g),
    lambda g: motion_kernel(21, 1.0, g),
])
def test_generated_kernels_are_valid(make, generator):
    k = make(generator)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert (k >= 0).all()
    assert abs(k.sum().item() - 1) < 1e-6
    c = (k.shape[0] - 1) / 2
    assert (center_of_mass(k) - c).abs().max() <= 0.5 + 1e-6  # centred to the nearest pixel


def test_gaussian_kernel_moments():
    k = gaussian_kernel(41, (3.0, 1.0), angle=90.0).double()  # rotated by 90: long axis vertical
    idx = torch.arange(41, dtype=torch.float64) - 20
    var_rows = (k.sum(1) * idx ** 2).sum()
    var_cols = (k.sum(0) * idx ** 2).sum()
    assert abs(var_rows - 9.0) < 0.05 and abs(var_cols - 1.0) < 0.05


def test_motion_kernel_is_seeded():
    a = motion_kernel(15, 0.7, torch.Generator().manual_seed(3))
    b = motion_kernel(15, 0.7, torch.Generator().manual_seed(3))
    c = motion_kernel(15, 0.7, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("array, fragment", [
    (np.ones((4, 4)) / 16, "odd side"),
    (np.ones((3, 5)) / 15, "odd side"),
    (np.full((3, 3), np.nan), "NaN"),
    (np.array([[0, 0, 0], [0, 1.5, 0], [0, 0, -0.5]]), "negative"),
    (np.ones((3, 3)), "sums to 9"),
])
def test_validate_kernel_errors(array, fragment):
    with pytest.raises(DataError, match=fragment):
        validate_kernel(array, "psf.npy")


def test_load_kernel_from_stack(tmp_path):
    stack = np.stack([gaussian_kernel(5, (1.0, 1.0)).numpy(), gaussian_kernel(5, (2.0, 2.0)).numpy()])
    np.save(tmp_path / "k.npy", stack)
    torch.testing.assert_close(load_kernel(tmp_path / "k.npy", 1), torch.from_numpy(stack[1]))
    with pytest.raises(DataError, match="index 2"):
        load_kernel(tmp_path / "k.npy", 2)
    with pytest.raises(DataError, match="not found"):
        load_kernel(tmp_path / "missing.npy")


def test_resize_kernel_keeps_centre():
    k = gaussian_kernel(5, (1.0, 1.0))
    big = resize_kernel(k, 9)
    assert big.shape == (9, 9) and torch.allclose(big[2:7, 2:7], k)
    torch.testing.assert_close(resize_kernel(big, 5), k)


def test_fft_blur_matches_scipy_and_its_adjoint_is_the_correlation(generator):
    """Wide kernels go through the FFT: 'circular' and 'valid' blur against scipy's direct
    convolution, and the adjoint against scipy's correlation (not autograd's own transpose)."""
    from scipy import ndimage, signal
    k = torch.rand(13, 13, generator=generator, dtype=torch.float64)
    assert k.shape[-1] >= FFT_MIN_SIDE
    x = torch.randn(1, 2, 23, 19, generator=generator, dtype=torch.float64)
    kn, xn = k.numpy(), x.numpy()[0]
    circular = Blur(k, "circular").double()
    np.testing.assert_allclose(circular.A(x)[0].numpy(), [ndimage.convolve(c, kn, mode="wrap") for c in xn],
                               atol=1e-10)
    y = torch.randn(1, 2, 23, 19, generator=generator, dtype=torch.float64)
    np.testing.assert_allclose(circular.A_adjoint(y)[0].numpy(),
                               [ndimage.correlate(c, kn, mode="wrap") for c in y.numpy()[0]], atol=1e-10)
    valid = Blur(k, "valid").double()
    np.testing.assert_allclose(valid.A(x)[0].numpy(), [signal.convolve2d(c, kn, mode="valid") for c in xn],
                               atol=1e-10)
    yv = torch.randn(1, 2, 11, 7, generator=generator, dtype=torch.float64)
    np.testing.assert_allclose(valid.A_adjoint(yv)[0].numpy(),
                               [signal.correlate2d(c, kn, mode="full") for c in yv.numpy()[0]], atol=1e-10)


def test_psf_grid_is_the_per_pixel_interpolated_blur_and_its_adjoint_the_transpose(generator):
    """PsfGrid against its definition, built independently: output pixel p is blurred by the PSF
    bilinearly interpolated at p's field position (psf_grid_math, numpy); A and A^T against that
    explicit matrix M and its transpose."""
    from ddmops.operators.psf_grid import PsfGrid, position_map
    from ddmops.operators.psf_grid_math import psf_at
    grid = torch.rand(3, 2, 5, 5, generator=generator, dtype=torch.float64)
    grid = grid / grid.sum((-1, -2), keepdim=True)
    h, w, k = 12, 9, 5
    pos = position_map(h, w, 4.0, 2.0, 30.0, 20.0)[None].double()  # a crop inside a larger field
    op = PsfGrid(grid, pos).double()
    oh, ow = h - k + 1, w - k + 1
    matrix = np.zeros((oh * ow, h * w))
    for i in range(oh):
        for j in range(ow):
            px, py = pos[0, :, i + k // 2, j + k // 2].tolist()  # the centre of p's window
            psf = psf_at(grid.numpy(), px, py)  # clipped at 0: the node PSFs are non-negative already
            for a in range(k):
                for b in range(k):  # true convolution: y[i, j] = sum psf[a, b] x[i + k-1-a, j + k-1-b]
                    matrix[i * ow + j, (i + k - 1 - a) * w + (j + k - 1 - b)] += psf[a, b]
    x = torch.randn(1, 1, h, w, generator=generator, dtype=torch.float64)
    np.testing.assert_allclose(op.A(x).flatten().numpy(), matrix @ x.flatten().numpy(), atol=1e-10)
    y = torch.randn(1, 1, oh, ow, generator=generator, dtype=torch.float64)
    np.testing.assert_allclose(op.A_adjoint(y).flatten().numpy(), matrix.T @ y.flatten().numpy(), atol=1e-10)
