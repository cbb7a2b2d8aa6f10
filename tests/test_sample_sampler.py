"""The EDM sampler: solver accuracy against closed forms, guidance switching, seeds, and an
end-to-end check with the exact 2D toy denoiser (no network)."""

import math

import pytest
import torch
from tiny import TINY_RGB_UNET
from torch import nn

from autoguide.data.toy2d import ExactToyDenoiser, toy_mixture
from autoguide.diffusion import edm_sigma_steps
from autoguide.nets import build_network
from autoguide.sample import GuidedDenoiser, SamplerSettings, SeedStreams, edm_sampler, generate_images, seed_noise
from autoguide.sample.guidance import CFG, ICG, TSG, Autoguidance


def sample(denoise, noise, seeds=None, **fields):
    """``edm_sampler`` with the sampler fields given by name and the seeds' streams."""
    return edm_sampler(denoise, noise, SamplerSettings(**fields), None if seeds is None else SeedStreams(seeds))


class GaussianDenoiser(nn.Module):
    """Exact denoiser of data ~ N(mu, s^2 I): ``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)``."""

    label_dim, img_channels, img_resolution, sigma_data = 0, 2, 0, 0.5

    def __init__(self, mu: float, s: float):
        super().__init__()
        self.mu, self.s = mu, s
        self.calls = []

    def forward(self, x, sigma, labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        self.calls.append(float(sigma.flatten()[0]))
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)


def ode_solution(noise, mu, s, sigma_max=80.0):
    """Probability-flow ODE of a Gaussian: ``x(sigma) - mu = sqrt((s^2 + sigma^2) / (s^2 + smax^2)) (x(smax) - mu)``."""
    return mu + s / math.sqrt(s**2 + sigma_max**2) * (sigma_max * noise - mu)


def test_heun_and_euler_follow_the_exact_ode():
    net = GaussianDenoiser(mu=0.3, s=0.6)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = ode_solution(noise, 0.3, 0.6)

    def error(num_steps, solver):
        return (sample(net, noise, num_steps=num_steps, solver=solver) - exact).abs().max().item()

    heun32, heun64, euler32, euler64 = error(32, "heun"), error(64, "heun"), error(32, "euler"), error(64, "euler")
    assert heun32 < 0.05 and euler32 > 4 * heun32
    assert 3.5 < heun32 / heun64 < 5  # 2nd order: doubling the steps divides the error by ~4
    assert 1.7 < euler32 / euler64 < 2.3  # 1st order: by ~2


def test_evaluation_count_heun_uses_euler_on_the_last_step():
    net = GaussianDenoiser(0.0, 1.0)
    sample(net, torch.zeros(1, 2), num_steps=8)
    assert len(net.calls) == 2 * 8 - 1
    assert net.calls[0] == pytest.approx(80.0) and net.calls[-1] == pytest.approx(0.002)


def test_churn_keeps_the_distribution_and_needs_seeds():
    net = GaussianDenoiser(mu=0.5, s=0.4)
    seeds = list(range(2000))
    noise = seed_noise(seeds, [2]).double()
    x = sample(net, noise, seeds=seeds, num_steps=32, S_churn=40, S_min=0.05, S_max=50)
    assert (x - ode_solution(noise, 0.5, 0.4)).abs().mean() > 0.05  # churn changed the paths
    assert abs(x.mean() - 0.5) < 0.03 and abs(x.std() - 0.4) < 0.03
    again = sample(net, noise[:7], seeds=seeds[:7], num_steps=32, S_churn=40, S_min=0.05, S_max=50)
    torch.testing.assert_close(again, x[:7], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="seeds"):
        sample(net, noise, num_steps=4, S_churn=10)


def test_weight_one_gives_exactly_the_unguided_sample():
    main, guide = GaussianDenoiser(0.5, 0.5), GaussianDenoiser(-0.3, 0.9)
    noise = torch.randn(16, 2, dtype=torch.float64)
    plain = sample(GuidedDenoiser(main), noise, num_steps=12)
    assert torch.equal(
        sample(GuidedDenoiser(main, [Autoguidance(guide=guide, weight=1.0)]), noise, num_steps=12), plain
    )
    assert not guide.calls
    assert not torch.equal(
        sample(GuidedDenoiser(main, [Autoguidance(guide=guide, weight=2.0)]), noise, num_steps=12), plain
    )


class ManualGuided(nn.Module):
    """Independent guided denoiser: ``D_g + w (D_m - D_g)`` for sigma in (lo, hi], else ``D_m``."""

    label_dim, img_channels, img_resolution, sigma_data = 0, 2, 0, 0.5

    def __init__(self, main, guide, w, lo, hi):
        super().__init__()
        self.main, self.guide, self.w, self.lo, self.hi = main, guide, w, lo, hi

    def forward(self, x, sigma, labels=None):
        s = float(torch.as_tensor(sigma).flatten()[0])
        d_main = self.main(x, sigma)
        if not self.lo < s <= self.hi:
            return d_main
        d_guide = self.guide(x, sigma)
        return d_guide + self.w * (d_main - d_guide)


def test_interval_switches_guidance_off_outside():
    main, guide = GaussianDenoiser(0.5, 0.5), GaussianDenoiser(-0.3, 0.9)
    noise = torch.randn(16, 2, dtype=torch.float64)
    grid = edm_sigma_steps(16, 0.002, 80.0, 7.0).tolist()
    lo, hi = grid[10], grid[4]  # boundaries hit exactly: (lo, hi] is open at lo, closed at hi
    out = sample(GuidedDenoiser(main, [Autoguidance(guide=guide, weight=2.5, interval=(lo, hi))]), noise, num_steps=16)
    # the guide is evaluated exactly at the evaluation sigmas inside (lo, hi]
    evaluated = main.calls
    assert guide.calls == [s for s in evaluated if lo < s <= hi]
    assert 0 < len(guide.calls) < len(evaluated)
    ref = sample(
        GuidedDenoiser(ManualGuided(GaussianDenoiser(0.5, 0.5), GaussianDenoiser(-0.3, 0.9), 2.5, lo, hi)),
        noise,
        num_steps=16,
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_seeds_make_images_batch_size_invariant():
    torch.manual_seed(0)
    net = build_network(TINY_RGB_UNET).eval()
    for p in net.parameters():
        if p.ndim == 0:
            p.data.fill_(0.8)
    seeds, labels = [5, 9, 2, 31, 7], [0, 1, 2, 3, 1]
    kwargs = {"guidance": [CFG(weight=1.5), ICG(weight=1.3), TSG(weight=1.4)], "num_steps": 4, "S_churn": 5.0}
    full = generate_images(net, seeds, labels, batch_size=5, **kwargs)
    for batch_size in (2, 1):
        torch.testing.assert_close(
            generate_images(net, seeds, labels, batch_size=batch_size, **kwargs), full, rtol=0, atol=1e-5
        )
    # an image depends on its seed (and label), not on its neighbours or position
    torch.testing.assert_close(generate_images(net, [31, 5], [3, 0], **kwargs), full[[3, 0]], rtol=0, atol=1e-5)
    assert full.shape == (5, 3, 8, 8)
    assert not torch.allclose(full[0], full[1], atol=1e-2)


def test_initial_noise_comes_from_the_seed():
    expected = torch.randn(3, 4, generator=torch.Generator().manual_seed(123))
    assert torch.equal(seed_noise([7, 123], [3, 4])[1], expected)


@pytest.mark.parametrize(
    "n, num_steps, tol",
    [(1000, 16, 0.15), pytest.param(8000, 32, 0.06, marks=pytest.mark.slow)],
)
def test_exact_toy_denoiser_reproduces_ground_truth_samples(n, num_steps, tol):
    """End-to-end: sampling with the exact toy denoiser (no network) must reproduce the tree
    (class A). The tolerance on the mean log-density is ~3.5 standard errors; Euler instead of
    Heun at 16 steps loses ~0.27 nats, 8 Heun steps ~20."""
    mixture = toy_mixture("A")
    samples = generate_images(ExactToyDenoiser("A"), list(range(n)), batch_size=n, num_steps=num_steps).double()
    truth = mixture.sample(max(n, 4000), torch.Generator().manual_seed(0))
    logp_truth = mixture.log_prob(truth)
    logp = mixture.log_prob(samples)
    assert abs(logp.mean().item() - logp_truth.mean().item()) < tol
    torch.testing.assert_close(samples.mean(0), truth.mean(0), rtol=0, atol=0.03)
    torch.testing.assert_close(torch.cov(samples.T), torch.cov(truth.T), rtol=0, atol=0.03)
    # the low-density gaps between branches stay (nearly) empty, as for true samples
    level = torch.quantile(logp_truth, 0.01)
    assert (logp < level).double().mean() < 0.035
