import pytest
import torch

from ddmops.config import DcdpConfig, DiffPirConfig, DpsConfig
from ddmops.flow import path as fpath
from ddmops.inversion.cg import solve_normal
from ddmops.inversion.dcdp import dcdp, purification_schedule, purify
from ddmops.inversion.diffpir import diffpir, diffpir_sigmas
from ddmops.inversion.dps import dps
from ddmops.operators.inpaint import Inpaint
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

    def velocity(self, x_t, t):
        x0 = self.denoise(x_t, t)
        return (x0 - x_t) / (1 - t)


def gaussian_problem(generator, batch=32, size=14, m=0.1, s=0.5, sigma_n=0.05, padding="valid"):
    """x ~ N(m, s^2 I), y = k * x + sigma_n n: truth, measurements, posterior mean and MMSE per pixel."""
    op = Blur(gaussian_kernel(5, (1.5, 1.5)).double(), padding)
    x_shape = (1, 1, size, size)
    A = dense(op, x_shape)
    n = A.shape[1]
    post_cov = torch.linalg.inv(A.T @ A / sigma_n ** 2 + torch.eye(n, dtype=torch.float64) / s ** 2)
    x = m + s * torch.randn(batch, 1, size, size, generator=generator, dtype=torch.float64)
    ax = op.A(x)
    y = ax + sigma_n * torch.randn(ax.shape, generator=generator, dtype=torch.float64)
    resid = y.reshape(batch, -1).T - A @ torch.full((n, 1), m, dtype=torch.float64)
    post_mean = (m + (post_cov @ (A.T @ resid) / sigma_n ** 2).T).reshape(x.shape)
    return op, x, y, post_mean, torch.trace(post_cov).item() / n


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
    op, x, y, post_mean, mmse = gaussian_problem(generator)
    assert abs(((post_mean - x) ** 2).mean().item() / mmse - 1) < 0.2  # the closed form is right
    prior, runs = GaussianPrior(0.1, 0.5), 8
    cfg = DiffPirConfig(steps=50, lam=1.0, zeta=0.3, cg_iters=50)
    samples = torch.stack([diffpir(y, op, prior, cfg, sigma_n=0.05, generator=torch.Generator().manual_seed(10 + k))
                           for k in range(runs)])
    single = ((samples[0] - x) ** 2).mean().item() / mmse
    spread = ((samples.mean(0) - post_mean) ** 2).mean().item() / mmse
    assert 1.0 < single < 2.2
    assert spread < 2.0 / runs
    assert prior.nfe == 50 * runs


def test_dps_samples_the_gaussian_posterior(generator):
    op, x, y, post_mean, mmse = gaussian_problem(generator, padding="reflect")
    prior, runs = GaussianPrior(0.1, 0.5), 4
    samples = torch.stack([dps(y, op, prior, DpsConfig(steps=100, zeta=1.0), x_shape=x.shape,
                               generator=torch.Generator().manual_seed(k)) for k in range(runs)])
    single = ((samples[0] - x) ** 2).mean().item() / mmse
    spread = ((samples.mean(0) - post_mean) ** 2).mean().item() / mmse
    assert 1.0 < single < 2.3 and spread < 2.0 / runs
    assert prior.nfe == 100 * runs


@pytest.mark.parametrize("mode, nfe, max_err, max_dist", [("tweedie", 10, 1.6, 0.6), ("ode", 181, 2.0, 1.0)])
def test_dcdp_lands_near_the_posterior_mean(mode, nfe, max_err, max_dist, generator):
    """With an exact prior, DCDP ends nearer the posterior mean than a posterior sample does
    (1 x MMSE away, 2 x MMSE from the truth on average): Tweedie purification returns means,
    ODE purification deterministic samples, hence its wider tolerance."""
    op, x, y, post_mean, mmse = gaussian_problem(generator, padding="reflect")
    prior = GaussianPrior(0.1, 0.5)
    out = dcdp(y, op, prior, DcdpConfig(iterations=10, inner_steps=20, lr=0.2, t_start=400), mode=mode,
               generator=torch.Generator().manual_seed(1))
    assert ((out.x - x) ** 2).mean().item() / mmse < max_err
    assert ((out.x - post_mean) ** 2).mean().item() / mmse < max_dist
    assert prior.nfe == nfe  # K Tweedie steps, or sum_k min(M, T_k) ODE steps


def test_purification_schedule_follows_dcdp():
    assert purification_schedule(10, 400, 0) == [400, 356, 311, 267, 222, 178, 133, 89, 44, 1]
    assert purification_schedule(5, 1000, 50) == [1000, 763, 525, 288, 50]
    cos = purification_schedule(5, 400, 0, "cosine")
    assert cos[0] == 400 and cos[-1] == 1 and all(a >= b for a, b in zip(cos, cos[1:]))
    with pytest.raises(ValueError):
        purification_schedule(500, 400)


def test_guided_ode_purification_is_ddim_with_dps_steps(generator):
    """Guided ODE purification (DCDP's code) equals, in DDPM coordinates, DDIM steps with x0
    clipped to [-1, 1], each but the last (from DDPM step 0) followed by DPS's correction
    -g grad_{x_vp} ||y - A(x0_hat(x_vp))|| (through the clipped x0_hat); and it fits y better."""
    op, x, y, _, _ = gaussian_problem(generator, batch=4, padding="reflect")
    prior, g, step = GaussianPrior(0.1, 0.5), 0.3, 300
    out = purify(x, prior, step, "ode", 3, torch.Generator().manual_seed(3), g, y, op)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(x)
    ab = [fpath.ddpm_alpha_bar(i).item() for i in (299, 150, 0)] + [1.0]  # M = 3 steps on the DDPM grid
    x_vp, clipped = ab[0] ** 0.5 * x + (1 - ab[0]) ** 0.5 * eps, 0
    for a, a_next in zip(ab[:-1], ab[1:]):
        xv = x_vp.detach().requires_grad_(True)
        x0 = prior.denoise(*fpath.ddpm_state_to_flow(xv, a))
        clipped += int((x0.abs() > 1).sum())
        x0 = x0.clamp(-1, 1)
        (grad,) = torch.autograd.grad((y - op.A(x0)).flatten(1).norm(dim=1).sum(), xv)
        x0 = x0.detach()
        eps_hat = (xv.detach() - a ** 0.5 * x0) / (1 - a) ** 0.5
        x_vp = a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps_hat - (g * grad if a_next < 1 else 0)
    assert clipped > 0  # the clipping is exercised
    torch.testing.assert_close(out, x_vp)  # at alpha_bar = 1 both coordinates agree
    plain = purify(x, prior, step, "ode", 3, torch.Generator().manual_seed(3))
    assert (y - op.A(out)).norm() < (y - op.A(plain)).norm()
    # from DDPM step 0 (a single, last step) guidance does nothing
    last = [purify(x, prior, 1, "ode", 3, torch.Generator().manual_seed(3), g_, y, op) for g_ in (0.0, 6.0)]
    torch.testing.assert_close(last[0], last[1], rtol=0, atol=0)


def test_purify_at_low_noise_is_near_identity(generator):
    prior = GaussianPrior(0.0, 0.5)
    x = (0.5 * torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)).clamp(-1, 1)
    for mode in ("ode", "tweedie"):
        out = purify(x, prior, 1, mode, 20, torch.Generator().manual_seed(0))
        assert ((out - x) ** 2).mean() < 1e-3


def test_dcdp_inpainting_keeps_known_pixels(generator):
    """Observed pixels stay within the noise level of the measurement."""
    mask = (torch.rand(4, 1, 12, 12, generator=generator) > 0.4).double()
    op = Inpaint(mask)
    x = 0.3 * torch.randn(4, 1, 12, 12, generator=generator, dtype=torch.float64)
    sigma = 0.02
    y = op.A(x) + sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64) * mask
    out = dcdp(y, op, GaussianPrior(0.0, 0.3), DcdpConfig(iterations=10, inner_steps=50, lr=0.5, t_start=400),
               mode="tweedie", generator=torch.Generator().manual_seed(0))
    known = mask.bool()
    assert (out.x - x.clamp(-1, 1))[known].abs().max() < 5 * sigma
    assert ((out.x_data - y)[known] ** 2).mean().sqrt() < sigma  # the data step fits the observed pixels
