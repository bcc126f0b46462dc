import math

import pytest
import torch

from ddmops.config import UNetConfig
from ddmops.flow import path as fpath
from ddmops.flow.ema import Ema, power_exponent
from ddmops.flow.prior import FlowPrior
from ddmops.flow.solver import integrate, nfe
from ddmops.flow.tiling import tiled
from ddmops.flow.loss import flow_matching_loss
from ddmops.flow.unet import UNetArch, VelocityUNet


def gaussian_velocity(m: float, s: float):
    """Exact velocity of the path from N(0, 1) to N(m, s^2) (per coordinate)."""
    def v(x, t):
        t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x)
        var = t ** 2 * s ** 2 + (1 - t) ** 2
        return m + (t * s ** 2 - (1 - t)) / var * (x - t * m)
    return v


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2)])
def test_solver_reaches_exact_transport_map(method, order, generator):
    """Gaussian data: the ODE maps eps to m + s * eps; the error falls at the solver's order."""
    m, s = 0.3, 0.5
    eps = torch.randn(512, 2, generator=generator, dtype=torch.float64)
    exact = m + s * eps
    errors = [(integrate(gaussian_velocity(m, s), eps, steps=n, method=method) - exact).abs().max().item()
              for n in (16, 32, 64)]
    assert errors[-1] < (0.05 if order == 1 else 5e-4)
    for coarse, fine in zip(errors, errors[1:]):
        assert coarse / fine == pytest.approx(2 ** order, rel=0.15)


def test_loss_zero_for_exact_velocity(generator):
    """For a single data point x*, v(x_t, t) = (x* - x_t) / (1 - t) makes the loss vanish."""
    x_star = torch.randn(1, 3, 8, 8, generator=generator, dtype=torch.float64)

    def exact(x_t, t):
        t = t.reshape(-1, 1, 1, 1).to(x_t)
        return (x_star - x_t) / (1 - t)

    loss = flow_matching_loss(exact, x_star.expand(64, -1, -1, -1).clone(), generator)
    assert loss.item() < 1e-16


def test_x0_and_eps_prediction_identities(generator):
    x = torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64)
    eps = torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64)
    t = torch.rand(4, generator=generator, dtype=torch.float64)
    x_t = fpath.interpolate(x, eps, t)
    v = fpath.target_velocity(x, eps)
    torch.testing.assert_close(fpath.x0_from_velocity(x_t, v, t), x)
    torch.testing.assert_close(fpath.eps_from_velocity(x_t, v, t), eps)
    torch.testing.assert_close(fpath.eps_from_x0(x_t, x, t), eps)


def test_sigma_t_round_trip():
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(fpath.sigma_from_t(fpath.t_from_sigma(sigma)), sigma)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(fpath.t_from_sigma(fpath.sigma_from_t(t)), t)


def test_ddpm_state_maps_exactly_to_flow(generator):
    x = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    eps = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    for step in (0, 250, 999):
        ab = fpath.ddpm_alpha_bar(step).item()
        x_vp = math.sqrt(ab) * x + math.sqrt(1 - ab) * eps
        x_t, t = fpath.ddpm_state_to_flow(x_vp, ab)
        torch.testing.assert_close(x_t, fpath.interpolate(x, eps, t))
        assert t == pytest.approx(fpath.t_from_ddpm_step(step).item(), rel=1e-12)


def test_logit_normal_times(generator):
    t = fpath.sample_t(10_000, generator, "logit_normal", mean=0.0, std=1.0)
    assert 0 < t.min() and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.01


def tiny_arch(**kw) -> UNetArch:
    return UNetArch.from_config(UNetConfig(channels=8, **kw), img_channels=3, resolution=16)


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (9, 40)])
def test_unet_any_size(size, generator):
    net = VelocityUNet(tiny_arch())
    x = torch.randn(2, 3, *size, generator=generator)
    assert net(x, torch.rand(2, generator=generator)).shape == x.shape


def test_unet_position_and_labels(generator):
    net = VelocityUNet(tiny_arch(position_channels=True, num_labels=2))
    x = torch.randn(2, 3, 16, 16, generator=generator)
    pos = torch.rand(2, 2, 16, 16, generator=generator)
    out = net(x, torch.rand(2), torch.tensor([0, 1]), pos)
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="position"):
        net(x, torch.rand(2), torch.tensor([0, 1]))


def test_prior_save_load_identical(tmp_path, generator):
    net = VelocityUNet(tiny_arch())
    for p in net.parameters():  # non-trivial weights (the output layer starts at zero)
        p.data.normal_(0, 0.1, generator=generator)
    prior = FlowPrior(net, {"domain": "clean", "patch_size": 16})
    prior.save(tmp_path / "p.safetensors")
    again = FlowPrior.load(tmp_path / "p.safetensors")
    assert again.meta == prior.meta and again.arch == prior.arch
    x = torch.randn(2, 3, 16, 16, generator=generator)
    t = torch.tensor([0.2, 0.7])
    torch.testing.assert_close(again.velocity(x, t), prior.velocity(x, t), rtol=0, atol=0)


def test_sampler_counts_nfe(generator):
    prior = FlowPrior(VelocityUNet(tiny_arch()))
    prior.sample((2, 3, 16, 16), generator, steps=5, method="heun")
    assert prior.nfe == nfe(5, "heun") == 10


def test_power_ema_exponent_matches_std():
    for std in (0.05, 0.1):
        g = power_exponent(std)
        assert math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) == pytest.approx(std, rel=1e-9)


def test_ema_classic_average():
    lin = torch.nn.Linear(1, 1, bias=False)
    lin.weight.data.fill_(0.0)
    ema = Ema(lin, "classic", decay=0.5)
    lin.weight.data.fill_(1.0)
    ema.update(lin)
    ema.update(lin)
    assert ema.model.weight.item() == pytest.approx(0.75)


# image size, tile side -> tiles: offsets every 12 px (a quarter of 16 overlapping), the last one flush
# with the far edge (40: 0, 12, 24; 37: 0, 12, 21; 29: 0, 12, 13; 50: 0, 12, 24, 34); at most a tile: whole
@pytest.mark.parametrize("size, tile, tiles", [((40, 40), 16, 9), ((37, 29), 16, 9), ((16, 50), 16, 4),
                                               ((12, 12), 16, 1)])
def test_tiles_blend_to_the_pointwise_function_exactly(size, tile, tiles, generator):
    """The function sees tile-sized crops, all in one batch, with the field positions cropped
    alike; blending weights sum to one everywhere, so a pixel-wise function comes back unchanged."""
    x = torch.randn(2, 3, *size, generator=generator)
    pos = torch.rand(2, 2, *size, generator=generator)
    calls = []

    def fn(z, position):
        calls.append(z.shape)
        assert z.shape[-2:] == position.shape[-2:]
        return torch.tanh(z) * position[:, :1] + position[:, 1:]

    out = tiled(fn, x, tile, position=pos)
    torch.testing.assert_close(out, torch.tanh(x) * pos[:, :1] + pos[:, 1:], rtol=1e-6, atol=1e-6)
    expected = (2 * tiles, 3, min(tile, size[0]), min(tile, size[1])) if tiles > 1 else x.shape
    assert calls == [expected]  # every tile in one batch


def test_tiled_prior_is_seamless_and_counts_one_evaluation(generator):
    net = VelocityUNet(tiny_arch())
    for p in net.parameters():
        p.data.normal_(0, 0.1, generator=generator)
    prior = FlowPrior(net)
    x, t = torch.randn(1, 3, 48, 48, generator=generator), torch.tensor([0.5])
    whole = prior.velocity(x, t)
    seen = []
    hook = net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    prior.tile, prior.nfe = 16, 0
    tiles = prior.velocity(x, t)
    hook.remove()
    assert seen == [(16, 3, 16, 16)]  # 4 x 4 tiles of 16 px (offsets 0, 12, 24, 32), one batch
    assert prior.nfe == 1 and tiles.shape == whole.shape
    # near tile borders the network sees less context; overlapping, blended tiles stay far closer
    # to the whole-image velocity than hard-edged ones
    hard = tiled(lambda z: net(z, t.repeat(z.shape[0])), x, 16, overlap=0)
    assert (tiles - whole).abs().max() < 0.5 * (hard - whole).abs().max()
    assert (tiles - whole).abs().mean() < 0.05 * whole.abs().mean()
    prior.tile = 64  # larger than the image: exactly the whole-image velocity
    torch.testing.assert_close(prior.velocity(x, t), whole, rtol=0, atol=0)
