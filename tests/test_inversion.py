import torch

from ddmops.flow import path as fpath
from ddmops.inversion.cg import solve_normal
from ddmops.inversion.diffpir import diffpir, diffpir_sigmas
from ddmops.operators.blur import Blur
from ddmops.operators.kernels import gaussian_kernel


class GaussianPrior:
    """Exact denoiser of i.i.d. N(m, s^2) pixels on the flow path (posterior mean of x given x_t)."""

    def __init__(self, m: float, s: float):
        self.m, self.s, self.nfe = m, s, 0

    def denoise(self, x_t, t):
        self.nfe += 1
        var = t ** 2 * self.s ** 2 + (1 - t) ** 2
        return self.m + t * self.s ** 2 / var * (x_t - t * self.m)


def dense(op, shape):
    """Matrix of a linear operator acting on tensors of ``shape`` (float64)."""
    n = torch.Size(shape).numel()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])
    return op.A(basis).reshape(n, -1).T


def test_cg_solves_normal_equations(generator):
    op = Blur(gaussian_kernel(5, (1.2, 0.8), 10.0).double())
    x_shape = (1, 1, 11, 9)
    A = dense(op, x_shape)
    y = torch.randn(1, 1, 7, 5, generator=generator, dtype=torch.float64)
    z = torch.randn(x_shape, generator=generator, dtype=torch.float64)
    rho = 0.05
    x = solve_normal(op, y, rho, z, iters=200, tol=1e-12)
    ref = torch.linalg.solve(A.T @ A + rho * torch.eye(A.shape[1], dtype=torch.float64),
                             A.T @ y.flatten() + rho * z.flatten())
    torch.testing.assert_close(x.flatten(), ref, atol=1e-8, rtol=1e-8)


def test_diffpir_schedule_decreasing_and_mapped():
    s = diffpir_sigmas(20)
    assert s.dtype == torch.float64 and (s[1:] < s[:-1]).all()
    assert 0 < fpath.t_from_sigma(s[0].item()) < 0.02  # starts near pure noise


def test_diffpir_samples_the_gaussian_posterior(generator):
    """Linear Gaussian problem with an exact prior: DiffPIR behaves as a posterior sampler.

    A posterior sample has expected squared error 2 x MMSE, the posterior mean 1 x MMSE,
    and the average of K independent samples lies at MMSE / K from the posterior mean.
    """
    m, s, sigma_n, batch, runs = 0.1, 0.5, 0.05, 32, 8
    op = Blur(gaussian_kernel(5, (1.5, 1.5)).double())
    x_shape = (1, 1, 14, 14)
    A = dense(op, x_shape)
    n = A.shape[1]
    post_cov = torch.linalg.inv(A.T @ A / sigma_n ** 2 + torch.eye(n, dtype=torch.float64) / s ** 2)
    mmse = torch.trace(post_cov).item() / n
    x = m + s * torch.randn(batch, 1, 14, 14, generator=generator, dtype=torch.float64)
    y = op.A(x) + sigma_n * torch.randn(batch, 1, 10, 10, generator=generator, dtype=torch.float64)
    resid = y.reshape(batch, -1).T - A @ torch.full((n, 1), m, dtype=torch.float64)
    post_mean = (m + (post_cov @ (A.T @ resid) / sigma_n ** 2).T).reshape(x.shape)
    assert abs(((post_mean - x) ** 2).mean().item() / mmse - 1) < 0.2  # the closed form is right

    prior = GaussianPrior(m, s)
    samples = torch.stack([diffpir(y, op, prior, sigma_n=sigma_n, steps=50, lam=1.0, zeta=0.3, cg_iters=50,
                                   generator=torch.Generator().manual_seed(10 + k)) for k in range(runs)])
    single = ((samples[0] - x) ** 2).mean().item() / mmse
    spread = ((samples.mean(0) - post_mean) ** 2).mean().item() / mmse
    assert 1.0 < single < 2.2
    assert spread < 2.0 / runs
    assert prior.nfe == 50 * runs
